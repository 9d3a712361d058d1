//! An image's run config made into the process a container starts, as docker does it:
//!
//! - argv: the entrypoint, then the command line's CMD if one is given, else the image's Cmd;
//! - env: the image's Env, then the command line's (a name given twice keeps the later);
//!   PATH defaults to the usual one when neither sets it;
//! - working directory: the command line's, else the image's WorkingDir, else `/`;
//! - user: the command line's, else the image's User (`name`, `uid`, `name:group`,
//!   `uid:gid`), resolved against the image's own `/etc/passwd` and `/etc/group`, which are
//!   read out of its layers (top layer first, whiteouts respected) only when a name or a
//!   primary group has to be looked up. Supplementary groups come from `/etc/group`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::ImageRunConfig;
use super::compress;
use super::confine;
use super::manifest::StoredImage;
use super::store::{Store, StoreError};

/// `/etc/passwd` or `/etc/group` larger than this is refused.
const MAX_ACCOUNT_FILE: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(
        "the image has no Entrypoint or Cmd, so there is nothing to run: give a command after --"
    )]
    NoCommand,
    #[error("user {0:?} is not valid: use NAME, UID, NAME:GROUP or UID:GID")]
    BadUser(String),
    #[error("user {user:?} is not in the image's /etc/passwd: use a numeric UID[:GID]")]
    UnknownUser { user: String },
    #[error("group {group:?} is not in the image's /etc/group: use a numeric GID")]
    UnknownGroup { group: String },
    #[error("environment entry {0:?} is not NAME=VALUE")]
    BadEnv(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read /etc/{file} from layer {layer}: {source}")]
    Layer {
        file: &'static str,
        layer: String,
        #[source]
        source: io::Error,
    },
}

/// What the command line says, to lay over the image's config.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// Replaces the image's Entrypoint when set (Kubernetes' `command`); the image's Cmd is
    /// then dropped too, as Kubernetes does, and `command` alone follows it.
    pub entrypoint: Option<Vec<String>>,
    /// CMD: replaces the image's Cmd when not empty.
    pub command: Vec<String>,
    /// `NAME=VALUE` entries added to (or replacing those of) the image's Env.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
}

/// The process to start in the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

impl Process {
    /// The protocol's process spec for this process, with its stdin and tty choices.
    pub fn into_spec(self, tty: bool, stdin: bool) -> crate::protocol::ProcessSpec {
        crate::protocol::ProcessSpec {
            args: self.args,
            env: self.env,
            cwd: std::path::PathBuf::from(self.cwd),
            uid: self.uid,
            gid: self.gid,
            additional_gids: self.additional_gids,
            tty,
            stdin,
        }
    }
}

/// Lays `overrides` over the image's run config; reads the image's account files from the
/// store when a user or group name must be resolved.
pub fn process_for(
    store: &Store,
    image: &StoredImage,
    config: &ImageRunConfig,
    overrides: &Overrides,
) -> Result<Process, ProcessError> {
    let mut accounts = |file| read_image_file(store, image, file);
    build_process(config, overrides, &mut accounts)
}

/// [`process_for`] with the account files coming from `accounts` (`"passwd"`, `"group"`).
pub fn build_process(
    config: &ImageRunConfig,
    overrides: &Overrides,
    accounts: &mut dyn FnMut(&'static str) -> Result<Option<String>, ProcessError>,
) -> Result<Process, ProcessError> {
    let args: Vec<String> = match &overrides.entrypoint {
        Some(entrypoint) => entrypoint
            .iter()
            .chain(&overrides.command)
            .cloned()
            .collect(),
        None => {
            let cmd = if overrides.command.is_empty() {
                &config.cmd
            } else {
                &overrides.command
            };
            config.entrypoint.iter().chain(cmd).cloned().collect()
        }
    };
    if args.is_empty() {
        return Err(ProcessError::NoCommand);
    }
    let env = merge_env(&config.env, &overrides.env)?;
    let cwd = match overrides.workdir.as_deref() {
        Some(dir) => dir.to_string(),
        None if config.working_dir.is_empty() => "/".to_string(),
        // Docker takes a relative WorkingDir from /.
        None if !config.working_dir.starts_with('/') => format!("/{}", config.working_dir),
        None => config.working_dir.clone(),
    };
    let user = overrides.user.as_deref().unwrap_or(&config.user);
    let (uid, gid, additional_gids) = resolve_user(user, accounts)?;
    Ok(Process {
        args,
        env,
        cwd,
        uid,
        gid,
        additional_gids,
    })
}

fn merge_env(image: &[String], extra: &[String]) -> Result<Vec<String>, ProcessError> {
    let mut order: Vec<String> = Vec::new();
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    for entry in image.iter().chain(extra) {
        let (name, _) = entry
            .split_once('=')
            .filter(|(name, _)| !name.is_empty())
            .ok_or_else(|| ProcessError::BadEnv(entry.clone()))?;
        if values.insert(name.to_string(), entry.clone()).is_none() {
            order.push(name.to_string());
        }
    }
    if !values.contains_key("PATH") {
        order.insert(0, "PATH".to_string());
        values.insert("PATH".to_string(), super::import::DEFAULT_PATH.to_string());
    }
    Ok(order
        .into_iter()
        .filter_map(|name| values.remove(&name))
        .collect())
}

/// `uid`, `gid` and supplementary groups for a docker-style user spec; root for an empty one.
fn resolve_user(
    spec: &str,
    accounts: &mut dyn FnMut(&'static str) -> Result<Option<String>, ProcessError>,
) -> Result<(u32, u32, Vec<u32>), ProcessError> {
    if spec.is_empty() {
        return Ok((0, 0, Vec::new()));
    }
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() || group.is_some_and(str::is_empty) {
        return Err(ProcessError::BadUser(spec.to_string()));
    }
    let numeric = |s: &str| s.parse::<u32>().ok();
    // uid:gid needs no files.
    if let (Some(uid), Some(gid)) = (numeric(user), group.and_then(numeric)) {
        return Ok((uid, gid, Vec::new()));
    }
    let passwd = accounts("passwd")?.unwrap_or_default();
    let entry = passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        let (name, uid, gid) = (fields.first()?, fields.get(2)?, fields.get(3)?);
        let (uid, gid) = (uid.parse::<u32>().ok()?, gid.parse::<u32>().ok()?);
        let matches = match numeric(user) {
            Some(wanted) => uid == wanted,
            None => *name == user,
        };
        matches.then(|| (name.to_string(), uid, gid))
    });
    let (name, uid, primary) = match (entry, numeric(user)) {
        (Some(found), _) => found,
        // A uid the image does not know runs with gid 0, as docker does.
        (None, Some(uid)) => (String::new(), uid, 0),
        (None, None) => {
            return Err(ProcessError::UnknownUser {
                user: user.to_string(),
            });
        }
    };
    let groups = accounts("group")?.unwrap_or_default();
    let gid = match group {
        None => primary,
        Some(g) => match numeric(g) {
            Some(gid) => gid,
            None => groups
                .lines()
                .find_map(|line| {
                    let fields: Vec<&str> = line.split(':').collect();
                    (fields.first() == Some(&g))
                        .then(|| fields.get(2)?.parse::<u32>().ok())
                        .flatten()
                })
                .ok_or_else(|| ProcessError::UnknownGroup {
                    group: g.to_string(),
                })?,
        },
    };
    let mut additional: Vec<u32> = if name.is_empty() {
        Vec::new()
    } else {
        groups
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                let gid = fields.get(2)?.parse::<u32>().ok()?;
                let members = fields.get(3)?;
                members.split(',').any(|m| m == name).then_some(gid)
            })
            .filter(|g| *g != gid)
            .collect()
    };
    additional.sort_unstable();
    additional.dedup();
    Ok((uid, gid, additional))
}

/// The content of `/etc/<file>` in the flattened image: the topmost layer that has it (or
/// deletes it, by a whiteout of it or an opaque `/etc`) decides. `None` when it is absent or
/// not a regular file.
pub fn read_image_file(
    store: &Store,
    image: &StoredImage,
    file: &'static str,
) -> Result<Option<String>, ProcessError> {
    for layer in image.layers.iter().rev() {
        let layer_err = |source| ProcessError::Layer {
            file,
            layer: layer.digest.to_string(),
            source,
        };
        let blob = store.open_blob(&layer.digest)?;
        let mut reader = BufReader::with_capacity(1 << 20, blob);
        let kind = compress::sniff(&mut reader).map_err(layer_err)?;
        let decompressed = compress::decompress(reader, kind).map_err(layer_err)?;
        match find_in_layer(decompressed, file).map_err(layer_err)? {
            Found::Absent => continue,
            Found::Deleted => return Ok(None),
            Found::File(bytes) => return Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        }
    }
    Ok(None)
}

enum Found {
    /// The layer does not mention it.
    Absent,
    /// Whited out, hidden by an opaque /etc, or not a regular file.
    Deleted,
    File(Vec<u8>),
}

fn find_in_layer(reader: impl Read, file: &str) -> io::Result<Found> {
    let mut found = Found::Absent;
    let mut archive = super::targuard::guarded(reader);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path_bytes().into_owned();
        let Ok(parts) = confine::clean(Path::new(OsStr::from_bytes(&path))) else {
            continue;
        };
        let names: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
        match names.as_slice() {
            [b"etc", name] if *name == file.as_bytes() => {
                found = if entry.header().entry_type().is_file() {
                    let mut bytes = Vec::new();
                    (&mut entry)
                        .take(MAX_ACCOUNT_FILE)
                        .read_to_end(&mut bytes)?;
                    Found::File(bytes)
                } else {
                    Found::Deleted
                };
            }
            [b"etc", name] if name.strip_prefix(b".wh.") == Some(file.as_bytes()) => {
                found = Found::Deleted;
            }
            // An opaque /etc hides lower layers' files; this layer's own may follow.
            [b"etc", b".wh..wh..opq"] if matches!(found, Found::Absent) => {
                found = Found::Deleted;
            }
            [b"etc"] if !entry.header().entry_type().is_dir() => found = Found::Deleted,
            _ => {}
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nstaff:x:50:app,other\napps:x:1001:\nwheel:x:10:app\n";

    fn config(entrypoint: &[&str], cmd: &[&str]) -> ImageRunConfig {
        let strings = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
        ImageRunConfig {
            entrypoint: strings(entrypoint),
            cmd: strings(cmd),
            env: vec!["PATH=/usr/bin:/bin".into(), "MODE=image".into()],
            working_dir: "/srv".into(),
            user: String::new(),
        }
    }

    fn build(config: &ImageRunConfig, overrides: &Overrides) -> Result<Process, ProcessError> {
        build_process(config, overrides, &mut |file| {
            Ok(Some(match file {
                "passwd" => PASSWD.to_string(),
                _ => GROUP.to_string(),
            }))
        })
    }

    #[test]
    fn cmd_on_the_command_line_replaces_cmd_not_entrypoint() {
        let image = config(&["/bin/echo"], &["default"]);
        let p = build(&image, &Overrides::default()).unwrap();
        assert_eq!(p.args, ["/bin/echo", "default"]);
        assert_eq!((p.cwd.as_str(), p.uid, p.gid), ("/srv", 0, 0));
        let overrides = Overrides {
            entrypoint: None,
            command: vec!["hi".into()],
            env: vec!["MODE=cli".into(), "EXTRA=1".into()],
            workdir: Some("/tmp".into()),
            user: None,
        };
        let p = build(&image, &overrides).unwrap();
        assert_eq!(p.args, ["/bin/echo", "hi"]);
        assert_eq!(p.env, ["PATH=/usr/bin:/bin", "MODE=cli", "EXTRA=1"]);
        assert_eq!(p.cwd, "/tmp");
        let bare = ImageRunConfig::default();
        assert!(matches!(
            build(&bare, &Overrides::default()),
            Err(ProcessError::NoCommand)
        ));
        let p = build(
            &bare,
            &Overrides {
                entrypoint: None,
                command: vec!["sh".into()],
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(p.args, ["sh"]);
        assert!(p.env[0].starts_with("PATH=/usr/local/sbin"));
        assert_eq!(p.cwd, "/");
        let bad_env = Overrides {
            env: vec!["NOEQUALS".into()],
            ..Overrides::default()
        };
        assert!(matches!(
            build(&image, &bad_env),
            Err(ProcessError::BadEnv(_))
        ));
    }

    #[test]
    fn users_resolve_through_the_image_accounts() {
        let mut image = config(&[], &["id"]);
        let with_user = |user: &str| Overrides {
            user: Some(user.into()),
            ..Overrides::default()
        };
        image.user = "app".into();
        let p = build(&image, &Overrides::default()).unwrap();
        assert_eq!(
            (p.uid, p.gid, p.additional_gids),
            (1000, 1001, vec![10, 50])
        );
        let p = build(&image, &with_user("1000")).unwrap();
        assert_eq!((p.uid, p.gid), (1000, 1001));
        let p = build(&image, &with_user("app:staff")).unwrap();
        assert_eq!((p.uid, p.gid, p.additional_gids), (1000, 50, vec![10]));
        let p = build(&image, &with_user("4242")).unwrap();
        assert_eq!((p.uid, p.gid), (4242, 0));
        let p = build(&image, &with_user("5:6")).unwrap();
        assert_eq!((p.uid, p.gid), (5, 6));
        for (spec, want) in [
            ("nobody", "not in the image's /etc/passwd"),
            ("app:nogroup", "not in the image's /etc/group"),
            (":1", "not valid"),
            ("app:", "not valid"),
        ] {
            let err = build(&image, &with_user(spec)).unwrap_err().to_string();
            assert!(err.contains(want), "{spec}: {err}");
        }
        // uid:gid never reads the files.
        let p = build_process(&image, &with_user("7:8"), &mut |_| panic!("read")).unwrap();
        assert_eq!((p.uid, p.gid), (7, 8));
    }

    fn layer(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            tar.append_data(&mut h, name, *data).unwrap();
        }
        tar.into_inner().unwrap()
    }

    #[test]
    fn account_files_come_from_the_topmost_layer_that_has_them() {
        let found = |l: Vec<u8>| match find_in_layer(&l[..], "passwd").unwrap() {
            Found::Absent => "absent".to_string(),
            Found::Deleted => "deleted".to_string(),
            Found::File(b) => String::from_utf8(b).unwrap(),
        };
        assert_eq!(found(layer(&[("etc/passwd", b"a")])), "a");
        assert_eq!(
            found(layer(&[("./etc/passwd", b"a"), ("etc/passwd", b"b")])),
            "b"
        );
        assert_eq!(found(layer(&[("etc/group", b"g")])), "absent");
        assert_eq!(found(layer(&[("etc/.wh.passwd", b"")])), "deleted");
        assert_eq!(found(layer(&[("etc/.wh..wh..opq", b"")])), "deleted");
        assert_eq!(
            found(layer(&[("etc/.wh..wh..opq", b""), ("etc/passwd", b"new")])),
            "new"
        );
    }
}
