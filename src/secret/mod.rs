//! Secrets (passwords, tokens, keys) that pods get at start: stored on the host, one file per
//! secret, and handed to a pod's supervisor, which sends them to the guest.
//!
//! What keeps a value safe here: the store's directory is 0700 and each file 0600 from the
//! moment it exists (never a looser file chmodded later); a [`Secret`] prints key names only
//! (`Debug` redacts values, there is no `Display` and no `Serialize`); every [`SecretError`]
//! names the secret and the key, never a value, and does not pass on parser messages that
//! could quote one (serde_json's, base64's).
//!
//! On disk: `$PEAPOD_ROOT/secrets/<name>.json`, `{ name, created_at, data: { key: base64 } }`.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::pod::registry::Registry;
use crate::pod::spec::{PodSpec, PodVolumeSource, SecretEnv};
use crate::pod::state::rfc3339;

/// The most bytes a secret's values may hold together (Kubernetes' limit).
pub const MAX_DATA_BYTES: usize = 1 << 20;
/// The longest secret name: a DNS-1123 subdomain has 253 characters at most, but the file
/// `<name>.json` must fit in a 255-byte file name.
pub const MAX_NAME_LEN: usize = 255 - ".json".len();
/// The longest key (Kubernetes' limit).
pub const MAX_KEY_LEN: usize = 253;
/// A secret file larger than this is refused unread (base64 of 1 MiB, plus room for JSON).
const MAX_FILE_BYTES: u64 = 2 << 20;

/// A secret with its values. `Debug` shows the key names and each value's length only.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    pub name: String,
    pub data: BTreeMap<String, Vec<u8>>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Redacted(usize);
        impl fmt::Debug for Redacted {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "<redacted {} bytes>", self.0)
            }
        }
        let data: BTreeMap<&str, Redacted> = self
            .data
            .iter()
            .map(|(k, v)| (k.as_str(), Redacted(v.len())))
            .collect();
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field("data", &data)
            .finish()
    }
}

impl Secret {
    pub fn new(name: impl Into<String>) -> Self {
        Secret {
            name: name.into(),
            data: BTreeMap::new(),
        }
    }

    /// Checks the name, every key and the total size.
    pub fn validate(&self) -> Result<(), SecretError> {
        validate_name(&self.name)?;
        for key in self.data.keys() {
            validate_key(&self.name, key)?;
        }
        let bytes: usize = self.data.values().map(Vec::len).sum();
        if bytes > MAX_DATA_BYTES {
            return Err(SecretError::TooLarge {
                name: self.name.clone(),
                bytes,
            });
        }
        Ok(())
    }
}

/// What `secret ls` shows: a secret without its values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretInfo {
    pub name: String,
    pub keys: Vec<String>,
    #[serde(with = "rfc3339")]
    pub created_at: SystemTime,
}

/// The file's form. Private, with no `Debug`: its `data` holds the values (in base64).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretFile {
    name: String,
    #[serde(with = "rfc3339")]
    created_at: SystemTime,
    data: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "invalid secret name {name:?}: {reason} (lowercase letters, digits, '-' and '.', \
         starting and ending with a letter or digit, at most {MAX_NAME_LEN} characters)"
    )]
    InvalidName { name: String, reason: &'static str },
    #[error(
        "secret {name}: invalid key {key:?}: {reason} (letters, digits, '-', '_' and '.', \
         at most {MAX_KEY_LEN} characters, not '.' or '..')"
    )]
    InvalidKey {
        name: String,
        key: String,
        reason: &'static str,
    },
    #[error(
        "secret {name}: its values hold {bytes} bytes, more than the {MAX_DATA_BYTES} (1 MiB) \
         a secret may hold"
    )]
    TooLarge { name: String, bytes: usize },
    #[error(
        "secret {name} exists: remove it first (peapod secret rm {name}) or replace it \
         (peapod secret create {name} --replace ...)"
    )]
    Exists { name: String },
    #[error(
        "no secret {name}: create it with peapod secret create {name} --from-literal KEY=VALUE"
    )]
    NotFound { name: String },
    /// A file of the store that is not what peapod writes; `reason` never quotes its content.
    #[error("secret file {path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl SecretError {
    fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        SecretError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// A DNS-1123 subdomain: dot-separated labels of lowercase letters, digits and '-', each
/// starting and ending with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), SecretError> {
    let bad = |reason| {
        Err(SecretError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("it is too long");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return bad("it has an empty part between dots, or starts or ends with a dot");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return bad("it has a character that is not allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a part starts or ends with '-'");
        }
    }
    Ok(())
}

/// A key of secret `name`: `[-._a-zA-Z0-9]+`, not `.` or `..` (it becomes a file name in
/// the guest).
pub fn validate_key(name: &str, key: &str) -> Result<(), SecretError> {
    let bad = |reason| {
        Err(SecretError::InvalidKey {
            name: name.to_owned(),
            key: key.to_owned(),
            reason,
        })
    };
    if key.is_empty() {
        return bad("it is empty");
    }
    if key.len() > MAX_KEY_LEN {
        return bad("it is too long");
    }
    if key == "." || key == ".." {
        return bad("it names a directory");
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return bad("it has a character that is not allowed");
    }
    Ok(())
}

/// The secrets of this host: one 0600 file per secret in a 0700 directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretStore {
    dir: PathBuf,
}

impl SecretStore {
    /// The store in `dir` (created on the first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SecretStore { dir: dir.into() }
    }

    /// `$PEAPOD_ROOT/secrets`, root default [`crate::image::store::DEFAULT_ROOT`].
    pub fn from_env() -> Self {
        Self::new(crate::image::store::Store::default_root().join("secrets"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Stores `secret`. With `replace` an existing one of that name is replaced whole;
    /// without, it is an error ([`SecretError::Exists`]), decided atomically (of two
    /// creates exactly one wins).
    pub fn create(&self, secret: &Secret, replace: bool) -> Result<(), SecretError> {
        secret.validate()?;
        let file = SecretFile {
            name: secret.name.clone(),
            created_at: SystemTime::now(),
            data: secret
                .data
                .iter()
                .map(|(k, v)| (k.clone(), STANDARD.encode(v)))
                .collect(),
        };
        let mut json = serde_json::to_vec_pretty(&file).map_err(|_| SecretError::Damaged {
            path: self.path(&secret.name),
            reason: "it cannot be written as JSON".into(),
        })?;
        json.push(b'\n');
        self.make_dir()?;
        let path = self.path(&secret.name);
        let tmp = self.write_temp(&json);
        json.fill(0);
        let tmp = tmp?;
        let placed = if replace {
            fs::rename(&tmp, &path).map_err(|e| SecretError::io("replace", &path, e))
        } else {
            // link(2) fails if the name exists: a create that cannot clobber.
            match fs::hard_link(&tmp, &path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(SecretError::Exists {
                    name: secret.name.clone(),
                }),
                Err(e) => Err(SecretError::io("create", &path, e)),
            }
        };
        if placed.is_err() || !replace {
            let _ = fs::remove_file(&tmp);
        }
        placed?;
        self.sync_dir()
    }

    /// The secret `name` with its values.
    pub fn get(&self, name: &str) -> Result<Secret, SecretError> {
        validate_name(name)?;
        let path = self.path(name);
        let file = self.read(name, &path)?;
        let mut data = BTreeMap::new();
        for (key, value) in file.data {
            validate_key(name, &key).map_err(|e| SecretError::Damaged {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let bytes = STANDARD
                .decode(value.as_bytes())
                .map_err(|_| SecretError::Damaged {
                    path: path.clone(),
                    reason: format!("the value of key {key} is not base64"),
                })?;
            data.insert(key, bytes);
        }
        Ok(Secret {
            name: file.name,
            data,
        })
    }

    /// Every secret's name, keys and creation time, by name; no values. A file that cannot
    /// be read is skipped with a warning.
    pub fn list(&self) -> Result<Vec<SecretInfo>, SecretError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(SecretError::io("list", &self.dir, e)),
        };
        let mut infos = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| SecretError::io("list", &self.dir, e))?;
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            // Temporary files start with '.', which no name does.
            if validate_name(name).is_err() {
                continue;
            }
            match self.read(name, &entry.path()) {
                Ok(file) => infos.push(SecretInfo {
                    name: file.name,
                    keys: file.data.into_keys().collect(),
                    created_at: file.created_at,
                }),
                Err(e) => tracing::warn!("skipping secret {name}: {e}"),
            }
        }
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(infos)
    }

    /// Removes the secret `name`. The caller checks that no live pod uses it
    /// ([`users_of`]).
    pub fn remove(&self, name: &str) -> Result<(), SecretError> {
        validate_name(name)?;
        let path = self.path(name);
        match fs::remove_file(&path) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(SecretError::NotFound {
                name: name.to_owned(),
            }),
            Err(e) => Err(SecretError::io("remove", path, e)),
        }
    }

    /// Reads and parses a secret file (not following a symlink), checking that it names
    /// the secret its file name says.
    fn read(&self, name: &str, path: &Path) -> Result<SecretFile, SecretError> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path);
        let file = match file {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SecretError::NotFound {
                    name: name.to_owned(),
                });
            }
            Err(e) => return Err(SecretError::io("read", path, e)),
        };
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| SecretError::io("read", path, e))?;
        let damaged = |reason: String| SecretError::Damaged {
            path: path.to_owned(),
            reason,
        };
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(damaged(format!("it is larger than {MAX_FILE_BYTES} bytes")));
        }
        // serde_json's message can quote the input: say only where it went wrong.
        let parsed: Result<SecretFile, _> = serde_json::from_slice(&bytes);
        bytes.fill(0);
        let file = parsed.map_err(|e| {
            damaged(format!(
                "not a secret's JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        if file.name != name {
            return Err(damaged(format!(
                "it holds secret {:?}, not {name}",
                file.name
            )));
        }
        Ok(file)
    }

    /// Makes the store's directory 0700 (its parents as usual), and tightens one that is
    /// looser.
    fn make_dir(&self) -> Result<(), SecretError> {
        if let Some(parent) = self.dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|e| SecretError::io("create", parent, e))?;
        }
        match DirBuilder::new().mode(0o700).create(&self.dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(SecretError::io("create", &self.dir, e)),
        }
        let meta = fs::metadata(&self.dir).map_err(|e| SecretError::io("stat", &self.dir, e))?;
        if meta.permissions().mode() & 0o077 != 0 {
            fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| SecretError::io("chmod 0700", &self.dir, e))?;
        }
        Ok(())
    }

    /// Writes `bytes` to a new temporary file in the store, 0600 from its creation, and
    /// fsyncs it. On error nothing is left.
    fn write_temp(&self, bytes: &[u8]) -> Result<PathBuf, SecretError> {
        static COUNT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let count = COUNT.fetch_add(1, Ordering::Relaxed);
        // Not the secret's name: a long one would not fit in a file name with the rest.
        let tmp = self
            .dir
            .join(format!(".tmp-{}-{nanos}-{count}", std::process::id()));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(|e| SecretError::io("create", &tmp, e))?;
        if let Err(e) = file.write_all(bytes).and_then(|()| file.sync_all()) {
            let _ = fs::remove_file(&tmp);
            return Err(SecretError::io("write", tmp, e));
        }
        Ok(tmp)
    }

    fn sync_dir(&self) -> Result<(), SecretError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| SecretError::io("sync directory", &self.dir, e))
    }
}

/// The secrets a pod spec refers to: its secret volumes and its containers' (init
/// containers' too) variables from secrets.
pub fn referenced_by(spec: &PodSpec) -> impl Iterator<Item = &str> {
    let volumes = spec.volumes.iter().filter_map(|v| match &v.source {
        PodVolumeSource::Secret { secret_name, .. } => Some(secret_name.as_str()),
        _ => None,
    });
    let env = spec
        .containers
        .iter()
        .chain(&spec.init_containers)
        .flat_map(|c| &c.secret_env)
        .map(|e| match e {
            SecretEnv::Key { secret, .. } | SecretEnv::All { secret, .. } => secret.as_str(),
        });
    volumes.chain(env)
}

/// The names of the live pods (Created or Running, with a supervisor) whose spec refers to
/// secret `name`; exited and failed pods do not count.
pub fn users_of(registry: &Registry, name: &str) -> Result<Vec<String>, crate::pod::PodError> {
    Ok(registry
        .list()?
        .into_iter()
        .filter(|v| v.state.status.is_active())
        .filter(|v| referenced_by(&v.record.spec).any(|s| s == name))
        .map(|v| v.record.name)
        .collect())
}

#[cfg(test)]
mod tests;
