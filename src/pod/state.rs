//! What a pod is doing, as its supervisor last wrote it, and the atomic JSON files that hold
//! it. Times are RFC 3339 strings (`2024-05-01T12:00:00.123456789Z`).

use std::fmt;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::PodError;
use super::id::PodId;

/// What a pod as a whole is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PodStatus {
    /// Its files exist; its VM has not started yet.
    Created,
    Running,
    /// Its containers have exited; `code` is the pod's exit code (its main container's).
    Exited {
        code: i32,
    },
    /// It could not start, or its supervisor died.
    Failed {
        reason: String,
    },
}

impl PodStatus {
    /// Created or Running: something should be supervising the pod.
    pub fn is_active(&self) -> bool {
        matches!(self, PodStatus::Created | PodStatus::Running)
    }
}

/// As `ps` shows it: `Created`, `Running`, `Exited (3)`, `Failed`.
impl fmt::Display for PodStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PodStatus::Created => f.write_str("Created"),
            PodStatus::Running => f.write_str("Running"),
            PodStatus::Exited { code } => write!(f, "Exited ({code})"),
            PodStatus::Failed { .. } => f.write_str("Failed"),
        }
    }
}

/// What one container is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ContainerStatus {
    Created,
    Running,
    /// `code` as a shell reports it (128 + signal for a killed process).
    Exited {
        code: i32,
        #[serde(default)]
        signal: Option<i32>,
        #[serde(default)]
        oom_killed: bool,
    },
}

impl fmt::Display for ContainerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContainerStatus::Created => f.write_str("Created"),
            ContainerStatus::Running => f.write_str("Running"),
            ContainerStatus::Exited { code, .. } => write!(f, "Exited ({code})"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerState {
    pub name: String,
    pub status: ContainerStatus,
    #[serde(default, with = "rfc3339_opt")]
    pub started_at: Option<SystemTime>,
    #[serde(default, with = "rfc3339_opt")]
    pub finished_at: Option<SystemTime>,
    #[serde(default)]
    pub restarts: u32,
}

impl ContainerState {
    /// A container that has not started.
    pub fn created(name: &str) -> Self {
        ContainerState {
            name: name.to_owned(),
            status: ContainerStatus::Created,
            started_at: None,
            finished_at: None,
            restarts: 0,
        }
    }
}

/// A pod's state: `RUN/<id>/state.json`, copied to `ROOT/pods/<id>/state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodState {
    pub id: PodId,
    pub name: String,
    pub status: PodStatus,
    #[serde(with = "rfc3339")]
    pub created_at: SystemTime,
    #[serde(default, with = "rfc3339_opt")]
    pub started_at: Option<SystemTime>,
    #[serde(default, with = "rfc3339_opt")]
    pub finished_at: Option<SystemTime>,
    #[serde(default)]
    pub supervisor_pid: Option<u32>,
    #[serde(default)]
    pub vmm_pid: Option<u32>,
    pub containers: Vec<ContainerState>,
    /// Why the pod failed, in full (the status's reason may be shorter).
    #[serde(default)]
    pub error: Option<String>,
    /// The pod's network while it is attached.
    #[serde(default)]
    pub network: Option<NetworkStatus>,
}

/// Where a pod sits on its network (`inspect` shows it; tests find the pieces to check).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkStatus {
    /// The CNI network's name.
    pub name: String,
    /// The pod's addresses (`10.88.0.5/16`).
    pub addresses: Vec<String>,
    /// The guest NIC's MAC (the veth's in the pod's namespace).
    pub mac: String,
    pub mtu: u32,
    /// The pod's network namespace on the host.
    pub netns: std::path::PathBuf,
    /// The host end of the pod's veth, where the plugin reported it.
    #[serde(default)]
    pub host_interface: Option<String>,
}

/// Formats `t` as RFC 3339 with nanoseconds, or `None` for a time humantime cannot write
/// (before 1970 or after 9999), where it would otherwise panic.
pub fn format_rfc3339(t: SystemTime) -> Option<String> {
    const YEAR_10000: Duration = Duration::from_secs(253_402_300_800);
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) if d < YEAR_10000 => Some(humantime::format_rfc3339_nanos(t).to_string()),
        _ => None,
    }
}

/// Parses an RFC 3339 time, as [`format_rfc3339`] writes it.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(s).ok()
}

/// `#[serde(with = "rfc3339")]` for a `SystemTime`.
pub mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer, de, ser};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let text = super::format_rfc3339(*t)
            .ok_or_else(|| ser::Error::custom("a time before 1970 or after 9999"))?;
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339(&text)
            .map_err(|e| de::Error::custom(format!("time {text:?} is not RFC 3339: {e}")))
    }
}

/// `#[serde(default, with = "rfc3339_opt")]` for an `Option<SystemTime>` (`null` for none).
pub mod rfc3339_opt {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::rfc3339::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "super::rfc3339")] SystemTime);
        Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
    }
}

/// Writes `value` as JSON to `path` so that a reader sees the old file or the new one, never
/// a mix, even across a crash: a temporary file in the same directory, written and fsynced,
/// renamed over `path`, then the directory fsynced.
pub fn write_json_atomic<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<(), PodError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut json = serde_json::to_vec_pretty(value).map_err(|source| PodError::Json {
        path: path.to_owned(),
        source,
    })?;
    json.push(b'\n');
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| PodError::io("create a temporary file in", dir, e))?;
    tmp.write_all(&json)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| PodError::io("write", tmp.path().to_owned(), e))?;
    tmp.persist(path)
        .map_err(|e| PodError::io("replace", path, e.error))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| PodError::io("sync directory", dir, e))
}

/// Reads a JSON file; errors name the file.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, PodError> {
    let bytes = std::fs::read(path).map_err(|e| PodError::io("read", path, e))?;
    serde_json::from_slice(&bytes).map_err(|source| PodError::Json {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> PodState {
        let t0 = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        PodState {
            id: PodId::generate().unwrap(),
            name: "web".into(),
            status: PodStatus::Exited { code: 3 },
            created_at: t0,
            started_at: Some(t0 + Duration::from_millis(150)),
            finished_at: Some(t0 + Duration::from_secs(60)),
            supervisor_pid: Some(42),
            vmm_pid: None,
            containers: vec![
                ContainerState {
                    name: "app".into(),
                    status: ContainerStatus::Exited {
                        code: 137,
                        signal: Some(9),
                        oom_killed: true,
                    },
                    started_at: Some(t0),
                    finished_at: Some(t0 + Duration::from_secs(1)),
                    restarts: 2,
                },
                ContainerState::created("side"),
            ],
            error: None,
            network: None,
        }
    }

    #[test]
    fn state_round_trips_with_rfc3339_times() {
        let s = state();
        let json = serde_json::to_string(&s).unwrap();
        assert!(
            json.contains("\"created_at\":\"2023-11-14T22:13:20.123456789Z\""),
            "{json}"
        );
        assert!(json.contains("\"exited\":{\"code\":3}"), "{json}");
        assert!(json.contains("\"started_at\":null"), "{json}");
        assert_eq!(serde_json::from_str::<PodState>(&json).unwrap(), s);
    }

    #[test]
    fn bad_times_are_errors_not_panics() {
        let mut s = state();
        s.created_at = UNIX_EPOCH - Duration::from_secs(1);
        assert!(serde_json::to_string(&s).is_err());
        s.created_at = UNIX_EPOCH + Duration::from_secs(300_000_000_000);
        assert!(serde_json::to_string(&s).is_err());
        let mut v = serde_json::to_value(state()).unwrap();
        v["created_at"] = "yesterday".into();
        let err = serde_json::from_value::<PodState>(v)
            .unwrap_err()
            .to_string();
        assert!(err.contains("RFC 3339"), "{err}");
    }

    #[test]
    fn status_shows_as_ps_does() {
        assert_eq!(PodStatus::Created.to_string(), "Created");
        assert_eq!(PodStatus::Running.to_string(), "Running");
        assert_eq!(PodStatus::Exited { code: 3 }.to_string(), "Exited (3)");
        let failed = PodStatus::Failed { reason: "x".into() };
        assert_eq!(failed.to_string(), "Failed");
        assert_eq!(
            serde_json::to_string(&PodStatus::Created).unwrap(),
            "\"created\""
        );
        assert!(PodStatus::Running.is_active() && !failed.is_active());
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut s = state();
        write_json_atomic(&path, &s).unwrap();
        s.status = PodStatus::Running;
        write_json_atomic(&path, &s).unwrap();
        assert_eq!(read_json::<PodState>(&path).unwrap(), s);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }

    #[test]
    fn read_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let err = read_json::<PodState>(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        std::fs::write(&path, "{not json").unwrap();
        let err = read_json::<PodState>(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("peapod rm"), "{err}");
    }
}
