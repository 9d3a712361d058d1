//! Pulls against an in-process fake registry (plain HTTP/1.1 on 127.0.0.1, one thread per
//! connection): anonymous, basic and bearer auth, manifest lists, digest mismatches,
//! truncated downloads, concurrent pulls of one image.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use base64::Engine as _;

use super::auth::Credentials;
use super::{ClientOptions, RegistryError};
use crate::image::digest::Digest;
use crate::image::pull::{self, LayerState, PullError, PullEvent, PullOptions, PullReport};
use crate::image::reference::ImageName;
use crate::image::store::{Store, StoreError};
use crate::image::unpack::{UnpackLimits, UnpackOptions};
use crate::image::{manifest, rootfs};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const TOKEN: &str = "fake-token-123";

#[derive(Clone)]
enum Auth {
    Anonymous,
    Basic(String),
    /// Tokens from `/token`, which wants these basic credentials when given.
    Bearer(Option<String>),
}

struct State {
    auth: Auth,
    /// (repository, tag or digest) -> (content type, bytes).
    manifests: HashMap<(String, String), (String, Vec<u8>)>,
    blobs: HashMap<String, Vec<u8>>,
    /// Blobs served with a flipped last byte.
    tampered: HashSet<String>,
    /// Blobs whose connection closes halfway.
    truncated: HashSet<String>,
    /// A manifest served with a wrong Docker-Content-Digest.
    lie_about_manifest: bool,
    /// Paths asked for, with the Authorization header seen.
    log: Vec<(String, Option<String>)>,
}

struct FakeRegistry {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl FakeRegistry {
    fn start(auth: Auth) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            auth,
            manifests: HashMap::new(),
            blobs: HashMap::new(),
            tampered: HashSet::new(),
            truncated: HashSet::new(),
            lie_about_manifest: false,
            log: Vec::new(),
        }));
        let shared = state.clone();
        // The thread outlives the test; the process ends it.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, addr, &state);
                });
            }
        });
        Self { addr, state }
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }

    fn add_blob(&self, bytes: Vec<u8>) -> Digest {
        let digest = Digest::of_bytes(&bytes);
        self.state
            .lock()
            .unwrap()
            .blobs
            .insert(digest.to_string(), bytes);
        digest
    }

    /// Adds a manifest under its digest and, when given, a tag.
    fn add_manifest(
        &self,
        repo: &str,
        tag: Option<&str>,
        media_type: &str,
        bytes: Vec<u8>,
    ) -> Digest {
        let digest = Digest::of_bytes(&bytes);
        let mut state = self.state.lock().unwrap();
        for reference in tag
            .into_iter()
            .map(str::to_string)
            .chain([digest.to_string()])
        {
            state.manifests.insert(
                (repo.to_string(), reference),
                (media_type.to_string(), bytes.clone()),
            );
        }
        digest
    }

    /// Pushes an image of gzip layers; returns its manifest digest and layer digests.
    fn push_image(
        &self,
        repo: &str,
        tag: Option<&str>,
        layers: &[Vec<u8>],
    ) -> (Digest, Vec<Digest>) {
        let diff_ids: Vec<String> = layers
            .iter()
            .map(|l| Digest::of_bytes(l).to_string())
            .collect();
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/app"], "WorkingDir": "/srv"},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config = serde_json::to_vec(&config).unwrap();
        let config_len = config.len();
        let config_digest = self.add_blob(config);
        let mut layer_json = Vec::new();
        let mut layer_digests = Vec::new();
        for layer in layers {
            let gz = gzip(layer);
            let len = gz.len();
            let digest = self.add_blob(gz);
            layer_json.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": digest.to_string(), "size": len,
            }));
            layer_digests.push(digest);
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest.to_string(), "size": config_len},
            "layers": layer_json,
        });
        let digest = self.add_manifest(
            repo,
            tag,
            OCI_MANIFEST,
            serde_json::to_vec(&manifest).unwrap(),
        );
        (digest, layer_digests)
    }

    fn log(&self) -> Vec<(String, Option<String>)> {
        self.state.lock().unwrap().log.clone()
    }
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)
}

fn serve(mut stream: TcpStream, addr: SocketAddr, state: &Mutex<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("authorization")
        {
            authorization = Some(value.trim().to_string());
        }
    }
    let target = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    let (path, _query) = target.split_once('?').unwrap_or((&target, ""));
    let mut state = state.lock().unwrap();
    state.log.push((path.to_string(), authorization.clone()));
    let basic = |creds: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(creds)
        )
    };
    let error =
        |code: &str| format!(r#"{{"errors":[{{"code":"{code}","message":"fake says {code}"}}]}}"#);

    if path == "/token" {
        return match &state.auth {
            Auth::Bearer(Some(creds)) if authorization != Some(basic(creds)) => respond(
                &mut stream,
                "401 Unauthorized",
                &[],
                error("UNAUTHORIZED").as_bytes(),
            ),
            _ => respond(
                &mut stream,
                "200 OK",
                &[],
                format!(r#"{{"token":"{TOKEN}"}}"#).as_bytes(),
            ),
        };
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return respond(&mut stream, "404 Not Found", &[], b"");
    };
    let (repo, kind, reference) = if let Some(i) = rest.rfind("/manifests/") {
        (&rest[..i], "manifests", &rest[i + "/manifests/".len()..])
    } else if let Some(i) = rest.rfind("/blobs/") {
        (&rest[..i], "blobs", &rest[i + "/blobs/".len()..])
    } else {
        return respond(&mut stream, "404 Not Found", &[], b"");
    };
    let challenge = match &state.auth {
        Auth::Anonymous => None,
        Auth::Basic(creds) => (authorization != Some(basic(creds))).then(|| r#"Basic realm="fake""#.to_string()),
        Auth::Bearer(_) => (authorization.as_deref() != Some(&format!("Bearer {TOKEN}"))).then(|| {
            format!(r#"Bearer realm="http://{addr}/token",service="fake",scope="repository:{repo}:pull""#)
        }),
    };
    if let Some(challenge) = challenge {
        return respond(
            &mut stream,
            "401 Unauthorized",
            &[("WWW-Authenticate", challenge)],
            error("UNAUTHORIZED").as_bytes(),
        );
    }
    if kind == "manifests" {
        let Some((media_type, bytes)) = state
            .manifests
            .get(&(repo.to_string(), reference.to_string()))
            .cloned()
        else {
            return respond(
                &mut stream,
                "404 Not Found",
                &[],
                error("MANIFEST_UNKNOWN").as_bytes(),
            );
        };
        let claimed = if state.lie_about_manifest {
            Digest::of_bytes(b"lie").to_string()
        } else {
            Digest::of_bytes(&bytes).to_string()
        };
        return respond(
            &mut stream,
            "200 OK",
            &[
                ("Content-Type", media_type),
                ("Docker-Content-Digest", claimed),
            ],
            &bytes,
        );
    }
    let Some(mut bytes) = state.blobs.get(reference).cloned() else {
        return respond(
            &mut stream,
            "404 Not Found",
            &[],
            error("BLOB_UNKNOWN").as_bytes(),
        );
    };
    if state.tampered.contains(reference)
        && let Some(last) = bytes.last_mut()
    {
        *last ^= 0xff;
    }
    if state.truncated.contains(reference) {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            bytes.len()
        );
        stream.write_all(head.as_bytes())?;
        return stream.write_all(&bytes[..bytes.len() / 2]);
    }
    respond(&mut stream, "200 OK", &[], &bytes)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// A layer of regular files (`name`, content); a name `.wh.X` makes a whiteout.
fn layer(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o755);
        h.set_size(data.len() as u64);
        h.set_mtime(1_600_000_000);
        builder.append_data(&mut h, name, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn two_layers() -> Vec<Vec<u8>> {
    vec![
        layer(&[("bin/app", b"v1"), ("etc/old", b"old")]),
        layer(&[("bin/app", b"v2"), ("etc/.wh.old", b"")]),
    ]
}

fn new_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    (dir, store)
}

fn pull_with(store: &Store, reference: &str, creds: Option<&str>) -> Result<PullReport, PullError> {
    let opts = PullOptions {
        client: ClientOptions {
            insecure: false,
            credentials: creds.and_then(Credentials::parse),
        },
        name: None,
    };
    pull::pull(store, reference, &opts, &mut |_| {})
}

/// Names, blob files and staging leftovers: what must not change when a pull fails.
fn snapshot(store: &Store) -> (usize, Vec<String>, usize) {
    let mut blobs: Vec<String> = std::fs::read_dir(store.root().join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    blobs.sort();
    let tmp = std::fs::read_dir(store.tmp_dir()).unwrap().count();
    (store.list().unwrap().len(), blobs, tmp)
}

fn unpack_opts() -> UnpackOptions {
    UnpackOptions {
        limits: UnpackLimits::default(),
        chown: false,
        devices: false,
    }
}

/// Unpacks a stored image and returns the temp dir holding `root/`.
fn unpacked(store: &Store, name: &str) -> tempfile::TempDir {
    let (_, image) = crate::image::open(store, name).unwrap();
    let dir = tempfile::tempdir().unwrap();
    rootfs::unpack_to(store, &image, &dir.path().join("root"), unpack_opts()).unwrap();
    dir
}

#[test]
fn anonymous_pull_stores_a_verified_image_once() {
    let registry = FakeRegistry::start(Auth::Anonymous);
    let (manifest_digest, layer_digests) =
        registry.push_image("team/app", Some("1"), &two_layers());
    let (_tmp, store) = new_store();
    let reference = format!("{}/team/app:1", registry.host());
    let mut events = Vec::new();
    let report = pull::pull(&store, &reference, &PullOptions::default(), &mut |e| {
        if let PullEvent::Layer { index, state, .. } = e
            && state != LayerState::Downloading
        {
            events.push((index, state));
        }
    })
    .unwrap();
    assert_eq!(report.name, reference);
    assert_eq!(report.digest, manifest_digest.to_string());
    assert_eq!((report.layers, report.added, report.reused), (2, 4, 0));
    assert_eq!(events, [(1, LayerState::Done), (2, LayerState::Done)]);
    let root = unpacked(&store, &reference);
    assert_eq!(
        std::fs::read(root.path().join("root/bin/app")).unwrap(),
        b"v2"
    );
    assert!(
        !root.path().join("root/etc/old").exists(),
        "the whiteout was not applied"
    );
    let (_, image) = crate::image::open(&store, &reference).unwrap();
    let config = crate::image::ImageRunConfig::from_config(&image.config);
    assert_eq!(
        (config.cmd, config.working_dir),
        (vec!["/bin/app".to_string()], "/srv".to_string())
    );

    // Again: nothing is downloaded but the manifest.
    let before = registry.log().len();
    let again = pull_with(&store, &reference, None).unwrap();
    assert_eq!((again.added, again.reused, again.downloaded), (0, 4, 0));
    let asked: Vec<String> = registry.log()[before..]
        .iter()
        .map(|(p, _)| p.clone())
        .collect();
    assert_eq!(asked, ["/v2/team/app/manifests/1".to_string()]);
    assert!(layer_digests.iter().all(|d| store.has_blob(d)));

    // By digest, stored under a name given for it.
    let opts = PullOptions {
        name: Some(ImageName::parse("pinned:v1").unwrap()),
        ..PullOptions::default()
    };
    let by_digest = format!("{}/team/app@{manifest_digest}", registry.host());
    let pinned = pull::pull(&store, &by_digest, &opts, &mut |_| {}).unwrap();
    assert_eq!(pinned.name, "pinned:v1");
    assert!(matches!(
        pull_with(&store, &by_digest, None),
        Err(PullError::NeedName { .. })
    ));
}

#[test]
fn basic_auth_is_answered_with_credentials() {
    let registry = FakeRegistry::start(Auth::Basic("alice:s3cret".to_string()));
    registry.push_image("private/app", Some("latest"), &two_layers());
    let (_tmp, store) = new_store();
    let reference = format!("{}/private/app", registry.host());
    let err = pull_with(&store, &reference, None).unwrap_err();
    assert!(
        matches!(err, PullError::Registry(RegistryError::Unauthorized { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("--creds"), "{err}");
    let err = pull_with(&store, &reference, Some("alice:wrong")).unwrap_err();
    assert!(
        err.to_string().contains("check the user name and password"),
        "{err}"
    );
    assert!(err.to_string().contains("fake says UNAUTHORIZED"), "{err}");
    assert_eq!(snapshot(&store), (0, vec![], 0));
    let report = pull_with(&store, &reference, Some("alice:s3cret")).unwrap();
    assert_eq!(report.name, format!("{reference}:latest"));
    let basic = Credentials::parse("alice:s3cret").unwrap().basic_header();
    let blob_requests: Vec<_> = registry
        .log()
        .into_iter()
        .filter(|(p, _)| p.contains("/blobs/"))
        .collect();
    assert_eq!(blob_requests.len(), 3);
    assert!(
        blob_requests
            .iter()
            .all(|(_, a)| a.as_deref() == Some(basic.as_str()))
    );
}

#[test]
fn bearer_tokens_come_from_the_realm() {
    let registry = FakeRegistry::start(Auth::Bearer(Some("bob:pw".to_string())));
    registry.push_image("team/app", Some("2"), &two_layers());
    let (_tmp, store) = new_store();
    let reference = format!("{}/team/app:2", registry.host());
    let err = pull_with(&store, &reference, None).unwrap_err();
    assert!(
        matches!(err, PullError::Registry(RegistryError::Unauthorized { .. })),
        "{err}"
    );
    pull_with(&store, &reference, Some("bob:pw")).unwrap();
    let log = registry.log();
    let tokens = log.iter().filter(|(p, _)| p == "/token").count();
    assert_eq!(
        tokens, 2,
        "one refused token request, then one for the whole pull: {log:?}"
    );
    let bearer = format!("Bearer {TOKEN}");
    assert!(
        log.iter()
            .filter(|(p, _)| p.contains("/blobs/"))
            .all(|(_, a)| a.as_deref() == Some(bearer.as_str()))
    );

    // A registry that hands out anonymous tokens.
    let open = FakeRegistry::start(Auth::Bearer(None));
    open.push_image("library/busybox", Some("latest"), &two_layers());
    let (_tmp2, store2) = new_store();
    pull_with(&store2, &format!("{}/library/busybox", open.host()), None).unwrap();
}

#[test]
fn a_blob_that_does_not_match_its_digest_is_refused() {
    let registry = FakeRegistry::start(Auth::Anonymous);
    let (_, layers) = registry.push_image("team/app", Some("1"), &two_layers());
    let (_tmp, store) = new_store();
    // Something stored first, so "unchanged" is not just "empty".
    registry.push_image("team/other", Some("1"), &[layer(&[("x", b"x")])]);
    pull_with(&store, &format!("{}/team/other:1", registry.host()), None).unwrap();
    let before = snapshot(&store);
    let reference = format!("{}/team/app:1", registry.host());

    registry
        .state
        .lock()
        .unwrap()
        .tampered
        .insert(layers[1].to_string());
    let err = pull_with(&store, &reference, None).unwrap_err();
    assert!(
        matches!(err, PullError::Store(StoreError::Mismatch { .. })),
        "{err}"
    );
    assert!(
        err.to_string().contains("does not match its descriptor"),
        "{err}"
    );
    assert_eq!(snapshot(&store), before);

    registry.state.lock().unwrap().tampered.clear();
    registry
        .state
        .lock()
        .unwrap()
        .truncated
        .insert(layers[0].to_string());
    let asked_before = registry.log().len();
    let err = pull_with(&store, &reference, None).unwrap_err();
    let tries = registry.log()[asked_before..]
        .iter()
        .filter(|(p, _)| p.ends_with(layers[0].hex()))
        .count();
    assert_eq!(tries, 3, "a cut connection is tried 3 times");
    assert!(
        matches!(
            err,
            PullError::Download { .. } | PullError::Store(StoreError::Mismatch { .. })
        ),
        "{err}"
    );
    assert_eq!(snapshot(&store), before);

    registry.state.lock().unwrap().truncated.clear();
    registry.state.lock().unwrap().lie_about_manifest = true;
    let err = pull_with(&store, &reference, None).unwrap_err();
    assert!(
        matches!(
            err,
            PullError::Registry(RegistryError::ManifestDigest { .. })
        ),
        "{err}"
    );
    assert_eq!(snapshot(&store), before);

    registry.state.lock().unwrap().lie_about_manifest = false;
    pull_with(&store, &reference, None).unwrap();
}

#[test]
fn manifest_lists_resolve_to_linux_amd64() {
    let registry = FakeRegistry::start(Auth::Anonymous);
    let (amd64, _) = registry.push_image("multi/app", None, &two_layers());
    let (arm64, _) = registry.push_image("multi/app", None, &[layer(&[("arm", b"arm")])]);
    let entry = |digest: &Digest, arch: &str| {
        serde_json::json!({"mediaType": OCI_MANIFEST, "digest": digest.to_string(), "size": 1,
                           "platform": {"os": "linux", "architecture": arch}})
    };
    let index = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [entry(&arm64, "arm64"), entry(&amd64, "amd64")],
    });
    registry.add_manifest(
        "multi/app",
        Some("1"),
        OCI_INDEX,
        serde_json::to_vec(&index).unwrap(),
    );
    // A docker manifest list with only arm: a clear error.
    let arm_only = serde_json::json!({
        "schemaVersion": 2, "mediaType": manifest::DOCKER_MANIFEST_LIST,
        "manifests": [entry(&arm64, "arm64")],
    });
    registry.add_manifest(
        "multi/app",
        Some("arm"),
        manifest::DOCKER_MANIFEST_LIST,
        serde_json::to_vec(&arm_only).unwrap(),
    );
    let (_tmp, store) = new_store();
    let report = pull_with(&store, &format!("{}/multi/app:1", registry.host()), None).unwrap();
    assert_eq!(report.digest, amd64.to_string());
    assert!(
        !registry.log().iter().any(|(p, _)| p.contains(arm64.hex())),
        "the arm64 manifest was fetched"
    );
    let err = pull_with(&store, &format!("{}/multi/app:arm", registry.host()), None).unwrap_err();
    assert!(err.to_string().contains("no linux/amd64 image"), "{err}");
    let err = pull_with(&store, &format!("{}/multi/nope:1", registry.host()), None).unwrap_err();
    assert!(
        matches!(err, PullError::Registry(RegistryError::NotFound { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("MANIFEST_UNKNOWN"), "{err}");
}

#[test]
fn concurrent_pulls_of_one_image_are_safe() {
    let registry = FakeRegistry::start(Auth::Bearer(None));
    let (digest, _) = registry.push_image("team/app", Some("1"), &two_layers());
    let (_tmp, store) = new_store();
    let reference = format!("{}/team/app:1", registry.host());
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| pull_with(&store, &reference, None)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for result in results {
        assert_eq!(result.unwrap().digest, digest.to_string());
    }
    let (names, blobs, tmp) = snapshot(&store);
    assert_eq!((names, blobs.len(), tmp), (1, 4, 0));
    assert_eq!(
        std::fs::read(unpacked(&store, &reference).path().join("root/bin/app")).unwrap(),
        b"v2"
    );
}

#[test]
fn unreachable_registries_fail_clearly() {
    // A port nothing listens on (bound, then closed).
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (_tmp, store) = new_store();
    let err = pull_with(&store, &format!("127.0.0.1:{port}/a/b"), None).unwrap_err();
    assert!(
        matches!(err, PullError::Registry(RegistryError::Http { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("cannot reach registry"), "{err}");
}

#[test]
fn short_names_find_pulled_images() {
    let (tmp, store) = new_store();
    let tarball = tmp.path().join("rootfs.tar");
    std::fs::write(&tarball, layer(&[("bin/app", b"x")])).unwrap();
    let opts = crate::image::import::ImportOptions {
        name: Some(ImageName::parse("docker.io/library/busybox:latest").unwrap()),
        reference: None,
    };
    crate::image::import::import(&store, &tarball, &opts).unwrap();
    let (name, _) = crate::image::open(&store, "busybox").unwrap();
    assert_eq!(name.to_string(), "busybox:latest");
    assert!(crate::image::open(&store, "docker.io/library/busybox").is_ok());
    let err = crate::image::open(&store, "alpine").unwrap_err();
    assert!(err.to_string().contains("is not in the store"), "{err}");
}

#[test]
fn layer_sizes_that_overflow_are_refused_before_any_download() {
    let registry = FakeRegistry::start(Auth::Anonymous);
    let config = registry.add_blob(b"{}".to_vec());
    let layer = |size: u64, fill: u8| {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": Digest::of_bytes(&[fill]).to_string(), "size": size,
        })
    };
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config.to_string(), "size": 2},
        "layers": [layer(u64::MAX - 10, 1), layer(100, 2), layer(u64::MAX, 3)],
    });
    registry.add_manifest(
        "huge/app",
        Some("1"),
        OCI_MANIFEST,
        serde_json::to_vec(&manifest).unwrap(),
    );
    let (_tmp, store) = new_store();
    let before = snapshot(&store);
    let err = pull_with(&store, &format!("{}/huge/app:1", registry.host()), None).unwrap_err();
    assert!(matches!(err, PullError::LayerSizes { .. }), "{err}");
    assert!(err.to_string().contains("huge/app:1"), "{err}");
    assert_eq!(snapshot(&store), before);
    assert!(
        !registry.log().iter().any(|(p, _)| p.contains("/blobs/")),
        "nothing is downloaded: {:?}",
        registry.log()
    );

    // The total `image ls` shows is checked too.
    let layers = [u64::MAX - 10, 100].map(|size| manifest::Layer {
        digest: Digest::of_bytes(b"x"),
        size,
        media_type: String::new(),
        diff_id: Digest::of_bytes(b"y"),
    });
    assert_eq!(manifest::total_size(layers.iter().map(|l| l.size)), None);
    assert_eq!(manifest::total_size([100, 1]), Some(101));
}
