//! Running CNI plugins (spec 1.0.0), written here rather than through libcni: each plugin of
//! a conflist in order for ADD (each gets the previous one's result as `prevResult`), in
//! reverse for DEL, with the CNI variables in the environment and the plugin's config on
//! stdin, `name`, `cniVersion` and `runtimeConfig` injected as libcni does. A plugin that
//! fails prints a CNI error object (`code`, `msg`, `details`), which our error quotes.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::conflist::{NetworkConfigList, PluginConf};

/// Where Debian's containernetworking-plugins puts the plugins.
pub const DEFAULT_PLUGIN_DIR: &str = "/usr/lib/cni";
/// Overrides the plugin directories (`:`-separated, as `CNI_PATH`).
pub const PLUGIN_PATH_ENV: &str = "PEAPOD_CNI_PATH";
/// The pod's interface name inside its namespace.
pub const POD_IFNAME: &str = "eth0";
/// How long one plugin may run. Generous: in the emulated test bed a Go plugin that runs
/// iptables a few times takes seconds.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// The PATH plugins get: the bridge plugin runs `iptables`, which lives in /usr/sbin.
const PLUGIN_PATH_VAR: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The most output kept from a plugin (results are small; this bounds a runaway one).
const MAX_OUTPUT: u64 = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CniCommand {
    Add,
    Del,
}

impl CniCommand {
    pub fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error(
        "CNI plugin {plugin:?} not found in {dirs}: install containernetworking-plugins \
         (`apt-get install containernetworking-plugins`) or name the plugin directory with \
         {PLUGIN_PATH_ENV}"
    )]
    NoPlugin { plugin: String, dirs: String },
    #[error("cannot run CNI plugin {path}: {source}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CNI plugin {plugin} {command} did not finish within {} s and was killed", .timeout.as_secs())]
    Timeout {
        plugin: String,
        command: &'static str,
        timeout: Duration,
    },
    #[error(
        "CNI plugin {plugin} {command} failed: {msg} (CNI error code {code}{}){}",
        if details.is_empty() { String::new() } else { format!(", details: {details}") },
        if stderr.is_empty() { String::new() } else { format!("; its stderr: {stderr}") }
    )]
    Plugin {
        plugin: String,
        command: &'static str,
        code: u64,
        msg: String,
        details: String,
        stderr: String,
    },
    #[error("CNI plugin {plugin} {command} failed ({status}) without a CNI error: {output}")]
    Failed {
        plugin: String,
        command: &'static str,
        status: String,
        output: String,
    },
    #[error("CNI plugin {plugin} {command} printed no valid result ({reason}): {output}")]
    BadResult {
        plugin: String,
        command: &'static str,
        reason: String,
        output: String,
    },
}

/// What every plugin of one ADD or DEL is told besides its config.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    pub command: CniCommand,
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
    pub plugin_dirs: &'a [PathBuf],
    /// Values for the plugins' `capabilities` (`portMappings`, `mac`, ...); each plugin gets
    /// only the keys it declares.
    pub runtime_config: &'a Map<String, Value>,
    pub timeout: Duration,
}

/// The plugin directories: `PEAPOD_CNI_PATH` when set, else [`DEFAULT_PLUGIN_DIR`].
pub fn default_plugin_dirs() -> Vec<PathBuf> {
    match std::env::var_os(PLUGIN_PATH_ENV) {
        Some(path) if !path.is_empty() => std::env::split_paths(&path).collect(),
        _ => vec![PathBuf::from(DEFAULT_PLUGIN_DIR)],
    }
}

/// The environment a plugin runs with (nothing else of ours leaks into it).
pub fn plugin_env(inv: &Invocation<'_>) -> Vec<(&'static str, String)> {
    let cni_path = std::env::join_paths(inv.plugin_dirs)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    vec![
        ("CNI_COMMAND", inv.command.as_str().to_string()),
        ("CNI_CONTAINERID", inv.container_id.to_string()),
        ("CNI_NETNS", inv.netns.to_string_lossy().into_owned()),
        ("CNI_IFNAME", inv.ifname.to_string()),
        ("CNI_PATH", cni_path),
        ("PATH", PLUGIN_PATH_VAR.to_string()),
    ]
}

/// A plugin's stdin: its own config with the list's `name` and `cniVersion`, the
/// `runtimeConfig` keys it declared as capabilities, and the previous result.
pub fn plugin_stdin(
    list: &NetworkConfigList,
    plugin: &PluginConf,
    runtime_config: &Map<String, Value>,
    prev_result: Option<&Value>,
) -> Value {
    let mut conf = plugin.conf.clone();
    conf.insert("name".into(), Value::String(list.name.clone()));
    conf.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
    let wanted: Map<String, Value> = runtime_config
        .iter()
        .filter(|(key, _)| plugin.capabilities.get(*key) == Some(&true))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if wanted.is_empty() {
        conf.remove("runtimeConfig");
    } else {
        conf.insert("runtimeConfig".into(), Value::Object(wanted));
    }
    match prev_result {
        Some(prev) => conf.insert("prevResult".into(), prev.clone()),
        None => conf.remove("prevResult"),
    };
    Value::Object(conf)
}

/// The plugin's executable: the first `dir/type` that is a file.
pub fn find_plugin(dirs: &[PathBuf], plugin_type: &str) -> Result<PathBuf, CniError> {
    dirs.iter()
        .map(|dir| dir.join(plugin_type))
        .find(|path| path.is_file())
        .ok_or_else(|| CniError::NoPlugin {
            plugin: plugin_type.to_string(),
            dirs: dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(":"),
        })
}

/// Runs ADD through the whole chain; returns the last plugin's result, as printed.
pub fn add(list: &NetworkConfigList, inv: &Invocation<'_>) -> Result<Value, CniError> {
    let mut prev: Option<Value> = None;
    for plugin in &list.plugins {
        let stdin = plugin_stdin(list, plugin, inv.runtime_config, prev.as_ref());
        let output = run_plugin(plugin, inv, &stdin)?;
        let result: Value = serde_json::from_slice(&output).map_err(|e| CniError::BadResult {
            plugin: plugin.plugin_type.clone(),
            command: inv.command.as_str(),
            reason: e.to_string(),
            output: shorten(&output),
        })?;
        if !result.is_object() {
            return Err(CniError::BadResult {
                plugin: plugin.plugin_type.clone(),
                command: inv.command.as_str(),
                reason: "not a JSON object".into(),
                output: shorten(&output),
            });
        }
        prev = Some(result);
    }
    prev.ok_or_else(|| CniError::BadResult {
        plugin: list.name.clone(),
        command: inv.command.as_str(),
        reason: "the network has no plugins".into(),
        output: String::new(),
    })
}

/// Runs DEL through the chain in reverse, each plugin given the ADD result (when there is
/// one). Every plugin runs even when one fails, so that what can be released is (the IPAM
/// lease above all); the first failure is returned.
pub fn del(
    list: &NetworkConfigList,
    inv: &Invocation<'_>,
    prev_result: Option<&Value>,
) -> Result<(), CniError> {
    let mut first_err = None;
    for plugin in list.plugins.iter().rev() {
        let stdin = plugin_stdin(list, plugin, inv.runtime_config, prev_result);
        if let Err(err) = run_plugin(plugin, inv, &stdin) {
            tracing::warn!("CNI DEL: {err}");
            first_err.get_or_insert(err);
        }
    }
    first_err.map_or(Ok(()), Err)
}

fn run_plugin(
    plugin: &PluginConf,
    inv: &Invocation<'_>,
    stdin: &Value,
) -> Result<Vec<u8>, CniError> {
    let path = find_plugin(inv.plugin_dirs, &plugin.plugin_type)?;
    let input = serde_json::to_vec(stdin).expect("a JSON value serializes");
    tracing::debug!(plugin = %path.display(), command = inv.command.as_str(), "running a CNI plugin");
    let out = exec(
        &path,
        inv.command.as_str(),
        &plugin_env(inv),
        &input,
        inv.timeout,
    )?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    Err(plugin_failure(
        &plugin.plugin_type,
        inv.command.as_str(),
        &out.status.to_string(),
        &out.stdout,
        &out.stderr,
    ))
}

/// The CNI error object a failing plugin prints on stdout.
#[derive(Debug, Deserialize)]
struct ErrorObject {
    code: u64,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: String,
}

/// Turns a failed plugin's output into an error, quoting its CNI error when it printed one.
pub fn plugin_failure(
    plugin: &str,
    command: &'static str,
    status: &str,
    stdout: &[u8],
    stderr: &[u8],
) -> CniError {
    match serde_json::from_slice::<ErrorObject>(stdout) {
        Ok(err) => CniError::Plugin {
            plugin: plugin.to_string(),
            command,
            code: err.code,
            msg: err.msg,
            details: err.details,
            stderr: shorten(stderr),
        },
        Err(_) => CniError::Failed {
            plugin: plugin.to_string(),
            command,
            status: status.to_string(),
            output: shorten(&[stdout, stderr].concat()),
        },
    }
}

/// A plugin's output for messages: text, trimmed, at most 2000 bytes.
fn shorten(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    match text.char_indices().nth(2000) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

struct Output {
    status: std::process::ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Runs `program` with only `env`, `input` on stdin; kills it after `timeout`.
fn exec(
    program: &Path,
    command: &'static str,
    env: &[(&'static str, String)],
    input: &[u8],
    timeout: Duration,
) -> Result<Output, CniError> {
    let plugin = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut child = Command::new(program)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CniError::Spawn {
            path: program.to_path_buf(),
            source,
        })?;
    // Pipes are served on threads so that neither side can block the other; the output
    // arrives on channels with the same deadline as the process.
    let mut stdin = child.stdin.take();
    let input = input.to_vec();
    std::thread::spawn(move || {
        if let Some(stdin) = stdin.as_mut() {
            let _ = stdin.write_all(&input);
        }
    });
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(pipe) = pipe {
                let _ = pipe.take(MAX_OUTPUT).read_to_end(&mut buf);
            }
            let _ = tx.send(buf);
        });
        rx
    };
    let stdout_rx = read(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr_rx = read(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(CniError::Timeout {
                    plugin,
                    command,
                    timeout,
                });
            }
        }
    };
    // A daemon the plugin left behind may hold the pipes: wait a little, not forever.
    let grace = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    let stdout = stdout_rx.recv_timeout(grace).unwrap_or_default();
    let stderr = stderr_rx
        .recv_timeout(Duration::from_millis(200))
        .unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Writes an executable shell script `name` into `dir`.
    pub(crate) fn fake_plugin(dir: &Path, name: &str, body: &str) {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn list(text: &str) -> NetworkConfigList {
        NetworkConfigList::parse(text.as_bytes(), Path::new("/t.conflist")).unwrap()
    }

    fn invocation<'a>(
        command: CniCommand,
        dirs: &'a [PathBuf],
        rc: &'a Map<String, Value>,
    ) -> Invocation<'a> {
        Invocation {
            command,
            container_id: "pod1",
            netns: Path::new("/run/netns/peapod-pod1"),
            ifname: POD_IFNAME,
            plugin_dirs: dirs,
            runtime_config: rc,
            timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn stdin_gets_name_version_capabilities_and_prev_result() {
        let list = list(
            r#"{"cniVersion":"1.0.0","name":"net","plugins":[
                {"type":"bridge","name":"stale","cniVersion":"0.1.0","runtimeConfig":{"x":1}},
                {"type":"portmap","capabilities":{"portMappings":true,"bandwidth":false}}]}"#,
        );
        let mut rc = Map::new();
        rc.insert(
            "portMappings".into(),
            serde_json::json!([{"hostPort": 8080}]),
        );
        rc.insert("bandwidth".into(), serde_json::json!({}));
        let first = plugin_stdin(&list, &list.plugins[0], &rc, None);
        assert_eq!(first["name"], "net");
        assert_eq!(first["cniVersion"], "1.0.0");
        assert!(first.get("runtimeConfig").is_none(), "{first}");
        assert!(first.get("prevResult").is_none());
        let prev = serde_json::json!({"cniVersion":"1.0.0","ips":[]});
        let second = plugin_stdin(&list, &list.plugins[1], &rc, Some(&prev));
        assert_eq!(second["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
        assert!(second["runtimeConfig"].get("bandwidth").is_none());
        assert_eq!(second["prevResult"], prev);
        assert_eq!(second["type"], "portmap");
    }

    #[test]
    fn env_names_the_command_netns_and_paths() {
        let dirs = [PathBuf::from("/a"), PathBuf::from("/b")];
        let rc = Map::new();
        let env = plugin_env(&invocation(CniCommand::Del, &dirs, &rc));
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).unwrap().1.clone();
        assert_eq!(get("CNI_COMMAND"), "DEL");
        assert_eq!(get("CNI_CONTAINERID"), "pod1");
        assert_eq!(get("CNI_NETNS"), "/run/netns/peapod-pod1");
        assert_eq!(get("CNI_IFNAME"), "eth0");
        assert_eq!(get("CNI_PATH"), "/a:/b");
        assert!(get("PATH").contains("/usr/sbin"));
    }

    #[test]
    fn a_plugin_error_is_quoted() {
        let dir = tempfile::tempdir().unwrap();
        fake_plugin(
            dir.path(),
            "failing",
            r#"cat >/dev/null
echo '{"cniVersion":"1.0.0","code":11,"msg":"failed to allocate","details":"range full"}'
echo 'some log' >&2
exit 1"#,
        );
        let dirs = [dir.path().to_path_buf()];
        let rc = Map::new();
        let list = list(r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"failing"}]}"#);
        let err = add(&list, &invocation(CniCommand::Add, &dirs, &rc)).unwrap_err();
        match &err {
            CniError::Plugin {
                code, msg, details, ..
            } => {
                assert_eq!(*code, 11);
                assert_eq!(msg, "failed to allocate");
                assert_eq!(details, "range full");
            }
            other => panic!("{other}"),
        }
        let text = err.to_string();
        for needle in [
            "failing ADD",
            "failed to allocate",
            "code 11",
            "range full",
            "some log",
        ] {
            assert!(text.contains(needle), "{needle}: {text}");
        }
        let err = plugin_failure("p", "DEL", "exit status: 2", b"panic: oops", b"");
        assert!(matches!(err, CniError::Failed { .. }));
        assert!(err.to_string().contains("panic: oops"), "{err}");
    }

    #[test]
    fn add_chains_results_and_del_runs_backwards() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        // each plugin logs "name COMMAND prevResult-marker", prints its stdin's prevResult
        // plus its own marker as the result
        for name in ["one", "two"] {
            fake_plugin(
                dir.path(),
                name,
                &format!(
                    r#"input=$(cat)
case "$input" in *'"marker":"one"'*) prev=one;; *) prev=none;; esac
echo "{name} $CNI_COMMAND $prev $CNI_IFNAME" >> {log}
echo '{{"cniVersion":"1.0.0","marker":"{name}","ips":[]}}'"#,
                    log = log.display()
                ),
            );
        }
        let dirs = [dir.path().to_path_buf()];
        let rc = Map::new();
        let list =
            list(r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"one"},{"type":"two"}]}"#);
        let result = add(&list, &invocation(CniCommand::Add, &dirs, &rc)).unwrap();
        assert_eq!(result["marker"], "two");
        del(
            &list,
            &invocation(CniCommand::Del, &dirs, &rc),
            Some(&result),
        )
        .unwrap();
        let logged = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            logged,
            "one ADD none eth0\ntwo ADD one eth0\ntwo DEL none eth0\none DEL none eth0\n"
        );
    }

    #[test]
    fn del_runs_every_plugin_even_after_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        fake_plugin(
            dir.path(),
            "ok",
            &format!("cat >/dev/null; echo ok >> {}", log.display()),
        );
        fake_plugin(
            dir.path(),
            "bad",
            "cat >/dev/null; echo '{\"code\":7,\"msg\":\"no\"}'; exit 1",
        );
        let dirs = [dir.path().to_path_buf()];
        let rc = Map::new();
        let list =
            list(r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"ok"},{"type":"bad"}]}"#);
        let err = del(&list, &invocation(CniCommand::Del, &dirs, &rc), None).unwrap_err();
        assert!(matches!(err, CniError::Plugin { code: 7, .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "ok\n");
    }

    #[test]
    fn missing_plugins_bad_results_and_hangs_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = [dir.path().to_path_buf()];
        let rc = Map::new();
        let err = find_plugin(&dirs, "nope").unwrap_err().to_string();
        assert!(
            err.contains("containernetworking-plugins") && err.contains(PLUGIN_PATH_ENV),
            "{err}"
        );
        fake_plugin(dir.path(), "garbage", "cat >/dev/null; echo not json");
        let list1 = list(r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"garbage"}]}"#);
        let err = add(&list1, &invocation(CniCommand::Add, &dirs, &rc)).unwrap_err();
        assert!(matches!(err, CniError::BadResult { .. }), "{err}");
        fake_plugin(dir.path(), "hang", "exec sleep 30");
        let list2 = list(r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"hang"}]}"#);
        let mut inv = invocation(CniCommand::Add, &dirs, &rc);
        inv.timeout = Duration::from_millis(300);
        let started = Instant::now();
        let err = add(&list2, &inv).unwrap_err();
        assert!(matches!(err, CniError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
