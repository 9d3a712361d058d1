//! CNI network configuration lists (`*.conflist`), loaded by network name as libcni does:
//! the files of a directory in name order, the first whose `name` matches wins. A conflist
//! is a third-party format that grows fields (`disableGC`, `cniVersions`, plugin options),
//! so it is kept as JSON and only the fields we act on are checked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// Where peapod looks for its CNI networks.
pub const DEFAULT_CONF_DIR: &str = "/etc/peapod/cni";
/// The network a pod joins unless told otherwise; written on first use when missing.
pub const DEFAULT_NETWORK: &str = "peapod";
/// The CNI versions whose results we understand (0.3.0 on share 1.0.0's result shape).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// The default network, like podman's `87-podman-bridge.conflist`: a bridge `peapod0` that
/// is the pods' gateway and masquerades their traffic, addresses from 10.88.0.0/16. No
/// `loopback` plugin (peapod brings lo up when it makes the namespace) and no `portmap`
/// (published ports are a proxy in the supervisor). The address leases live under `/run`,
/// like the namespaces they belong to: after a reboot neither is left (in host-local's
/// default `/var/lib/cni/networks` leases of pods gone with the reboot would stay taken).
pub const DEFAULT_CONFLIST: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "peapod",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "peapod0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "/run/peapod/cni/networks",
        "routes": [{ "dst": "0.0.0.0/0" }],
        "ranges": [[{ "subnet": "10.88.0.0/16", "gateway": "10.88.0.1" }]]
      }
    }
  ]
}
"#;

#[derive(Debug, thiserror::Error)]
pub enum ConflistError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "no CNI network named {name:?} in {dir} (its *.conflist files define {}){}; add a \
         conflist with \"name\": {name:?} there or pick one of those",
        if found.is_empty() { "no networks".to_string() } else { found.join(", ") },
        if broken.is_empty() { String::new() } else { format!("; unreadable: {}", broken.join("; ")) }
    )]
    NotFound {
        name: String,
        dir: PathBuf,
        found: Vec<String>,
        broken: Vec<String>,
    },
    #[error("cannot write the default network to {path}: {source}")]
    WriteDefault {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A checked network configuration list.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<PluginConf>,
    /// The file as read: what DEL will be given again, byte for byte in meaning.
    pub raw: Value,
}

/// One plugin of the chain: its `type` (the executable's name), the capabilities it asks
/// for (`runtimeConfig` keys), and its whole configuration object.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConf {
    pub plugin_type: String,
    pub capabilities: BTreeMap<String, bool>,
    pub conf: Map<String, Value>,
}

impl NetworkConfigList {
    /// Checks a conflist; `path` only names it in errors.
    pub fn parse(text: &[u8], path: &Path) -> Result<Self, ConflistError> {
        let raw: Value = serde_json::from_slice(text).map_err(|source| ConflistError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_value(raw, path)
    }

    pub fn from_value(raw: Value, path: &Path) -> Result<Self, ConflistError> {
        let invalid = |reason: String| ConflistError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let top = raw
            .as_object()
            .ok_or_else(|| invalid("a conflist is a JSON object".into()))?;
        let name = top
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("\"name\" (a string) is missing".into()))?;
        if !valid_name(name) {
            return Err(invalid(format!(
                "network name {name:?} must start with a letter or digit and hold only letters, \
                 digits, '_', '.' and '-'"
            )));
        }
        let cni_version = top
            .get("cniVersion")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("\"cniVersion\" (a string) is missing".into()))?;
        if !SUPPORTED_VERSIONS.contains(&cni_version) {
            return Err(invalid(format!(
                "cniVersion {cni_version:?} is not supported (peapod speaks {})",
                SUPPORTED_VERSIONS.join(", ")
            )));
        }
        let list = top
            .get("plugins")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid("\"plugins\" (a list) is missing".into()))?;
        if list.is_empty() {
            return Err(invalid("\"plugins\" is empty".into()));
        }
        let mut plugins = Vec::with_capacity(list.len());
        for (index, plugin) in list.iter().enumerate() {
            let conf = plugin
                .as_object()
                .ok_or_else(|| invalid(format!("plugins[{index}] is not an object")))?;
            let plugin_type = conf
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(format!("plugins[{index}] has no \"type\" string")))?;
            if plugin_type.is_empty() || plugin_type.contains('/') || plugin_type.starts_with('.') {
                return Err(invalid(format!(
                    "plugins[{index}]: type {plugin_type:?} must be a plugin's file name"
                )));
            }
            let capabilities = match conf.get("capabilities") {
                None => BTreeMap::new(),
                Some(caps) => serde_json::from_value(caps.clone()).map_err(|_| {
                    invalid(format!(
                        "plugins[{index}]: \"capabilities\" must map names to true or false"
                    ))
                })?,
            };
            plugins.push(PluginConf {
                plugin_type: plugin_type.to_string(),
                capabilities,
                conf: conf.clone(),
            });
        }
        Ok(NetworkConfigList {
            name: name.to_string(),
            cni_version: cni_version.to_string(),
            plugins,
            raw,
        })
    }
}

/// CNI's rule for network names (and container ids): `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Loads network `name` from the `*.conflist` files of `dir` (name order, first match
/// wins). When the default network is asked for and no file defines it, writes
/// [`DEFAULT_CONFLIST`] as `dir/peapod.conflist` first.
pub fn load(dir: &Path, name: &str) -> Result<NetworkConfigList, ConflistError> {
    match find(dir, name) {
        Err(ConflistError::NotFound { .. }) if name == DEFAULT_NETWORK => {
            let path = dir.join(format!("{DEFAULT_NETWORK}.conflist"));
            if path.exists() {
                // a broken peapod.conflist is the user's: report it, never overwrite it
                let text = std::fs::read(&path).map_err(|source| ConflistError::Read {
                    path: path.clone(),
                    source,
                })?;
                return NetworkConfigList::parse(&text, &path);
            }
            write_default(&path)?;
            tracing::info!(path = %path.display(), "wrote the default CNI network");
            NetworkConfigList::parse(DEFAULT_CONFLIST.as_bytes(), &path)
        }
        other => other,
    }
}

fn find(dir: &Path, name: &str) -> Result<NetworkConfigList, ConflistError> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "conflist") && p.is_file())
            .collect(),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            return Err(ConflistError::Read {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    files.sort();
    let mut found = Vec::new();
    let mut broken = Vec::new();
    for path in files {
        let parsed = std::fs::read(&path)
            .map_err(|source| ConflistError::Read {
                path: path.clone(),
                source,
            })
            .and_then(|text| NetworkConfigList::parse(&text, &path));
        match parsed {
            Ok(list) if list.name == name => return Ok(list),
            Ok(list) => found.push(list.name),
            Err(err) => {
                tracing::warn!("skipping a CNI conflist: {err}");
                broken.push(err.to_string());
            }
        }
    }
    Err(ConflistError::NotFound {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        found,
        broken,
    })
}

fn write_default(path: &Path) -> Result<(), ConflistError> {
    let err = |source| ConflistError::WriteDefault {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(err)?;
    // temp file + rename: a concurrent first pod sees no file or a whole one
    let temp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
    std::fs::write(temp.path(), DEFAULT_CONFLIST).map_err(err)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(0o644)).map_err(err)?;
    temp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NetworkConfigList, ConflistError> {
        NetworkConfigList::parse(text.as_bytes(), Path::new("/x.conflist"))
    }

    #[test]
    fn the_default_conflist_is_valid() {
        let list = parse(DEFAULT_CONFLIST).unwrap();
        assert_eq!(list.name, DEFAULT_NETWORK);
        assert_eq!(list.cni_version, "1.0.0");
        assert_eq!(list.plugins.len(), 1);
        let bridge = &list.plugins[0];
        assert_eq!(bridge.plugin_type, "bridge");
        assert_eq!(bridge.conf["bridge"], "peapod0");
        assert_eq!(bridge.conf["ipMasq"], true);
        assert_eq!(bridge.conf["isGateway"], true);
        assert_eq!(
            bridge.conf["ipam"]["ranges"][0][0]["subnet"],
            "10.88.0.0/16"
        );
    }

    #[test]
    fn good_conflists_parse() {
        let list = parse(
            r#"{"cniVersion":"0.4.0","name":"net-1.a_b","disableCheck":true,"extra":[1],
                "plugins":[{"type":"bridge","ipam":{}},
                           {"type":"portmap","capabilities":{"portMappings":true}}]}"#,
        )
        .unwrap();
        assert_eq!(list.name, "net-1.a_b");
        assert_eq!(list.plugins[1].plugin_type, "portmap");
        assert!(list.plugins[1].capabilities["portMappings"]);
        assert_eq!(list.raw["extra"][0], 1);
    }

    #[test]
    fn bad_conflists_say_what_is_wrong() {
        let table = [
            ("{", "not valid JSON"),
            ("[]", "JSON object"),
            (
                r#"{"cniVersion":"1.0.0","plugins":[{"type":"b"}]}"#,
                "\"name\"",
            ),
            (r#"{"name":"n","plugins":[{"type":"b"}]}"#, "\"cniVersion\""),
            (
                r#"{"name":"n","cniVersion":"0.2.0","plugins":[{"type":"b"}]}"#,
                "not supported",
            ),
            (
                r#"{"name":"-n","cniVersion":"1.0.0","plugins":[{"type":"b"}]}"#,
                "network name",
            ),
            (
                r#"{"name":"a b","cniVersion":"1.0.0","plugins":[{"type":"b"}]}"#,
                "network name",
            ),
            (r#"{"name":"n","cniVersion":"1.0.0"}"#, "\"plugins\""),
            (r#"{"name":"n","cniVersion":"1.0.0","plugins":[]}"#, "empty"),
            (
                r#"{"name":"n","cniVersion":"1.0.0","plugins":[1]}"#,
                "not an object",
            ),
            (
                r#"{"name":"n","cniVersion":"1.0.0","plugins":[{}]}"#,
                "no \"type\"",
            ),
            (
                r#"{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"../sh"}]}"#,
                "file name",
            ),
            (
                r#"{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"/bin/sh"}]}"#,
                "file name",
            ),
            (
                r#"{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"b","capabilities":{"x":1}}]}"#,
                "capabilities",
            ),
        ];
        for (text, needle) in table {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
            assert!(err.contains("/x.conflist"), "{text}: {err}");
        }
    }

    #[test]
    fn load_picks_by_name_and_lists_what_it_found() {
        let dir = tempfile::tempdir().unwrap();
        let write = |file: &str, name: &str, bridge: &str| {
            let text = format!(
                r#"{{"cniVersion":"1.0.0","name":"{name}","plugins":[{{"type":"bridge","bridge":"{bridge}"}}]}}"#
            );
            std::fs::write(dir.path().join(file), text).unwrap();
        };
        write("10-a.conflist", "alpha", "first");
        write("20-a.conflist", "alpha", "second");
        write("30-b.conflist", "beta", "b");
        write("40-c.conf", "gamma", "ignored: not a .conflist");
        std::fs::write(dir.path().join("50-broken.conflist"), "{").unwrap();
        let alpha = load(dir.path(), "alpha").unwrap();
        assert_eq!(alpha.plugins[0].conf["bridge"], "first");
        assert_eq!(load(dir.path(), "beta").unwrap().name, "beta");
        let err = load(dir.path(), "gamma").unwrap_err().to_string();
        for needle in ["\"gamma\"", "alpha", "beta", "50-broken.conflist"] {
            assert!(err.contains(needle), "{needle}: {err}");
        }
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        let err = load(&dir.path().join("none"), "x").unwrap_err().to_string();
        assert!(err.contains("no networks"), "{err}");
    }

    #[test]
    fn the_default_network_is_written_once_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let conf_dir = dir.path().join("cni");
        let list = load(&conf_dir, DEFAULT_NETWORK).unwrap();
        assert_eq!(list.plugins[0].conf["bridge"], "peapod0");
        let written = std::fs::read_to_string(conf_dir.join("peapod.conflist")).unwrap();
        assert_eq!(written, DEFAULT_CONFLIST);
        // another name is not defaulted
        assert!(matches!(
            load(&conf_dir, "other"),
            Err(ConflistError::NotFound { .. })
        ));
        // a user's own peapod network (any file name) wins
        std::fs::write(
            conf_dir.join("00-mine.conflist"),
            r#"{"cniVersion":"1.0.0","name":"peapod","plugins":[{"type":"bridge","bridge":"mine0"}]}"#,
        )
        .unwrap();
        assert_eq!(
            load(&conf_dir, DEFAULT_NETWORK).unwrap().plugins[0].conf["bridge"],
            "mine0"
        );
        // a broken peapod.conflist is reported, not replaced
        std::fs::remove_file(conf_dir.join("00-mine.conflist")).unwrap();
        std::fs::write(conf_dir.join("peapod.conflist"), "{broken").unwrap();
        let err = load(&conf_dir, DEFAULT_NETWORK).unwrap_err();
        assert!(matches!(err, ConflistError::Parse { .. }), "{err}");
        assert_eq!(
            std::fs::read_to_string(conf_dir.join("peapod.conflist")).unwrap(),
            "{broken"
        );
    }
}
