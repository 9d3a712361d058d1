//! Image tests. On the host: a real registry (Debian's `docker-registry`, basic auth) on
//! 127.0.0.1, an image pushed to it with skopeo, pulled with `peapod image pull`, flattened
//! into an erofs block image whose files are checked. In a pod VM: `vm run-container
//! --image` with the built-in image and with an imported one.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use libtest_mimic::Failed;

use crate::support::{
    AGENT_INITRAMFS_ENV, Case, GUEST_KERNEL_ENV, Place, artifact, check, peapod, run_peapod,
};

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "run_container_with_images_from_the_store",
            place: Place::Kvm,
            run: run_container_with_images_from_the_store,
            skip_if: None,
        },
        Case {
            name: "image_pull_from_a_registry_and_build_its_block_image",
            place: Place::Host,
            run: image_pull_from_a_registry_and_build_its_block_image,
            skip_if: Some(|| {
                let missing: Vec<&str> = ["docker-registry", "skopeo", "mkfs.erofs", "fsck.erofs"]
                    .into_iter()
                    .filter(|tool| find_tool(tool).is_none())
                    .collect();
                (!missing.is_empty()).then(|| {
                format!(
                    "{} not installed (scripts/setup installs docker-registry, skopeo, erofs-utils)",
                    missing.join(", ")
                )
            })
            }),
        },
    ]
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A registry process, killed when dropped.
struct Registry {
    child: Child,
    host: String,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The registry's one user (HTTP basic auth, htpasswd), and the bcrypt hash of its password.
const REGISTRY_USER: &str = "e2e";
const REGISTRY_PASSWORD: &str = "e2e-pass";
const REGISTRY_HTPASSWD: &str = "e2e:$2b$04$nAlt3gk9lIp9gjDSzrdlBuiTcFRPynAX9mRoVJkZi8.QkRKIWUspa";

fn start_registry(dir: &Path) -> Result<Registry, Failed> {
    // A free port: bound by us, released, then given to the registry.
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let config = dir.join("registry.yml");
    let htpasswd = dir.join("htpasswd");
    fs::write(&htpasswd, format!("{REGISTRY_HTPASSWD}\n"))?;
    fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n\
             auth:\n  htpasswd:\n    realm: e2e\n    path: {}\n",
            dir.join("storage").display(),
            htpasswd.display()
        ),
    )?;
    let log = fs::File::create(dir.join("registry.log"))?;
    let child = Command::new(find_tool("docker-registry").ok_or("no docker-registry")?)
        .arg("serve")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start docker-registry: {e}"))?;
    let registry = Registry {
        child,
        host: format!("127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(&registry.host).is_err() {
        if Instant::now() > deadline {
            let log = fs::read_to_string(dir.join("registry.log")).unwrap_or_default();
            return Err(
                format!("docker-registry did not listen on {}: {log}", registry.host).into(),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(registry)
}

enum Entry<'a> {
    Dir(&'a str),
    File(&'a str, &'a str),
    Exec(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    Hard(&'a str, &'a str),
}

fn layer_tar(entries: &[Entry]) -> Result<Vec<u8>, Failed> {
    let mut tar = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        match entry {
            Entry::Dir(name) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                tar.append_data(&mut h, name, std::io::empty())?;
            }
            Entry::File(name, text) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(text.len() as u64);
                tar.append_data(&mut h, name, text.as_bytes())?;
            }
            Entry::Exec(name, bytes) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o755);
                h.set_size(bytes.len() as u64);
                tar.append_data(&mut h, name, *bytes)?;
            }
            Entry::Symlink(name, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                tar.append_link(&mut h, name, target)?;
            }
            Entry::Hard(name, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                h.set_size(0);
                tar.append_link(&mut h, name, target)?;
            }
        }
    }
    Ok(tar.into_inner()?)
}

/// Writes an OCI layout with four gzip layers (busybox with `echo`; files, a whiteout, an
/// opaque directory, a hard link and a symlink) and a run config; its index names it `v1`.
fn write_layout(dir: &Path) -> Result<(), Failed> {
    let busybox = fs::read(peapod::image::builtin::find_busybox()?)?;
    let layers = [
        layer_tar(&[
            Entry::Dir("bin"),
            Entry::Exec("bin/busybox", &busybox),
            Entry::Symlink("bin/echo", "busybox"),
        ])?,
        layer_tar(&[
            Entry::Dir("etc"),
            Entry::File("etc/motd", "from layer 1"),
            Entry::File("etc/gone", "deleted by layer 2"),
            Entry::Dir("data"),
            Entry::File("data/old", "hidden by the opaque dir"),
        ])?,
        layer_tar(&[
            Entry::File("etc/.wh.gone", ""),
            Entry::Dir("data"),
            Entry::File("data/.wh..wh..opq", ""),
            Entry::File("data/new", "layer 2 data"),
        ])?,
        layer_tar(&[
            Entry::Dir("work"),
            Entry::File("etc/motd", "from layer 3"),
            Entry::Hard("etc/motd-link", "etc/motd"),
            Entry::Symlink("etc/motd-sym", "/etc/motd"),
        ])?,
    ];
    let run_config = serde_json::json!({
        "Entrypoint": ["/bin/echo"], "Cmd": ["hello"],
        "Env": ["PATH=/bin", "GREETING=hi"], "WorkingDir": "/work",
    });
    Ok(peapod::image::layout::write_oci_layout(
        dir, &layers, run_config, "v1",
    )?)
}

fn image_pull_from_a_registry_and_build_its_block_image() -> Result<(), Failed> {
    let tmp = tempfile::tempdir()?;
    let registry = start_registry(tmp.path())?;
    let layout = tmp.path().join("layout");
    write_layout(&layout)?;
    let reference = format!("{}/e2e/app:1", registry.host);
    let push = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
        ])
        .arg(format!("--dest-creds={REGISTRY_USER}:{REGISTRY_PASSWORD}"))
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("docker://{reference}"))
        .output()?;
    check(push.status.success(), "skopeo pushes the test image", &push)?;

    let store = tmp.path().join("store");
    let store_arg = store.to_str().ok_or("temp path is not UTF-8")?;
    let anonymous = run_peapod(&["image", "pull", "--root", store_arg, &reference])?;
    check(
        !anonymous.status.success()
            && String::from_utf8_lossy(&anonymous.stderr).contains("--creds"),
        "a pull without credentials is refused, naming --creds",
        &anonymous,
    )?;
    let creds = format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}");
    let pull = run_peapod(&[
        "image", "pull", "--root", store_arg, "--creds", &creds, &reference,
    ])?;
    let stdout = String::from_utf8_lossy(&pull.stdout);
    let stderr = String::from_utf8_lossy(&pull.stderr);
    check(pull.status.success(), "peapod image pull succeeds", &pull)?;
    check(
        stdout.starts_with(&format!("{reference} sha256:")),
        "pull prints NAME DIGEST",
        &pull,
    )?;
    check(
        stderr.contains("4 layer(s)")
            && stderr.contains("layer 4/4")
            && stderr.contains("verified"),
        "pull shows layer progress",
        &pull,
    )?;
    let again = run_peapod(&[
        "image", "pull", "--root", store_arg, "--creds", &creds, &reference,
    ])?;
    check(
        again.status.success() && String::from_utf8_lossy(&again.stderr).contains("0 new blob(s)"),
        "a second pull downloads nothing new",
        &again,
    )?;

    // `peapod run` pulls an image the store lacks before it starts the pod (on this host
    // the pod itself can only start where there is hardware KVM).
    let run_root = tempfile::tempdir()?;
    let run_store = run_root.path().join("store");
    let run = Command::new(peapod())
        .args(["run", "--rm", &reference, "from-run"])
        .env("PEAPOD_ROOT", &run_store)
        .env("PEAPOD_RUN_DIR", run_root.path().join("run"))
        .env("PEAPOD_REGISTRY_CREDS", &creds)
        .output()?;
    let listed = Command::new(peapod())
        .args(["image", "ls", "--root"])
        .arg(&run_store)
        .output()?;
    check(
        String::from_utf8_lossy(&listed.stdout).contains("e2e/app"),
        "peapod run pulled the image it did not have",
        &run,
    )?;
    check(
        run.status.code() == Some(0) || run.status.code() == Some(125),
        "peapod run of a pulled image ends (0 with hardware KVM, 125 without)",
        &run,
    )?;

    let inspect = run_peapod(&["image", "inspect", "--root", store_arg, &reference])?;
    check(inspect.status.success(), "inspect succeeds", &inspect)?;
    let info: serde_json::Value = serde_json::from_slice(&inspect.stdout)?;
    check(
        info["config"]["Entrypoint"] == serde_json::json!(["/bin/echo"])
            && info["config"]["WorkingDir"] == "/work"
            && info["layers"].as_array().map(Vec::len) == Some(4),
        "inspect shows the run config and 4 layers",
        &inspect,
    )?;

    let build = run_peapod(&["image", "build-disk", "-v", "--root", store_arg, &reference])?;
    check(build.status.success(), "build-disk succeeds", &build)?;
    let disk = PathBuf::from(String::from_utf8_lossy(&build.stdout).trim());
    let rebuild = run_peapod(&["image", "build-disk", "-v", "--root", store_arg, &reference])?;
    check(
        String::from_utf8_lossy(&rebuild.stderr).starts_with("cached"),
        "the second build-disk is a cache hit",
        &rebuild,
    )?;

    // Read the erofs image back with erofs-utils' own extractor.
    let extracted = tmp.path().join("extracted");
    let fsck = Command::new(find_tool("fsck.erofs").ok_or("no fsck.erofs")?)
        .arg(format!("--extract={}", extracted.display()))
        .arg(&disk)
        .output()?;
    check(
        fsck.status.success(),
        "fsck.erofs extracts the block image",
        &fsck,
    )?;
    let read = |p: &str| fs::read_to_string(extracted.join(p)).unwrap_or_else(|e| format!("<{e}>"));
    let found = [
        ("etc/motd", read("etc/motd")),
        ("etc/motd-link", read("etc/motd-link")),
        ("data/new", read("data/new")),
    ];
    let expected = ["from layer 3", "from layer 3", "layer 2 data"];
    for ((path, got), want) in found.iter().zip(expected) {
        if got != want {
            return Err(
                format!("{path} in the block image: expected {want:?}, got {got:?}").into(),
            );
        }
    }
    let link = fs::read_link(extracted.join("etc/motd-sym"))?;
    if link != Path::new("/etc/motd") {
        return Err(format!("etc/motd-sym points at {}", link.display()).into());
    }
    for gone in ["etc/gone", "data/old"] {
        if fs::symlink_metadata(extracted.join(gone)).is_ok() {
            return Err(format!("{gone} should have been removed by a whiteout").into());
        }
    }
    if !extracted.join("work").is_dir() {
        return Err("the working directory /work is missing".into());
    }

    // And the pulled image runs in a pod VM: the store (with its block image) goes into the
    // test bed, where the image's Entrypoint (/bin/echo from its busybox layer) gets our CMD.
    let pod = run_peapod(&[
        "machine",
        "run",
        "--copy",
        &format!("{store_arg}:/opt/e2e-store"),
        "--",
        "peapod",
        "vm",
        "run-container",
        "--store",
        "/opt/e2e-store",
        "--image",
        &reference,
        "--",
        "pulled-and-run",
    ])?;
    check(
        pod.status.code() == Some(0)
            && String::from_utf8_lossy(&pod.stdout).contains("pulled-and-run"),
        "the pulled image runs in a pod VM (Entrypoint echo + CMD)",
        &pod,
    )
}

/// In a pod VM (test bed or hardware KVM), with an empty store: the built-in image (made
/// on first use, its block image built with the carried mkfs.erofs), then an image
/// imported from a layout whose Entrypoint, Cmd, Env, WorkingDir and User apply, and a CMD
/// on the command line that replaces Cmd.
fn run_container_with_images_from_the_store() -> Result<(), Failed> {
    let kernel = artifact(GUEST_KERNEL_ENV)?;
    let agent = artifact(AGENT_INITRAMFS_ENV)?;
    let tmp = tempfile::tempdir()?;
    let store = tmp.path().join("store");
    let path = |p: &Path| -> Result<String, Failed> {
        p.to_str()
            .map(str::to_string)
            .ok_or_else(|| format!("{} is not UTF-8", p.display()).into())
    };
    let (kernel, agent, store_arg) = (path(&kernel)?, path(&agent)?, path(&store)?);
    let run = |image: &str, extra: &[&str], cmd: &[&str]| {
        let mut args = vec![
            "vm",
            "run-container",
            "--kernel",
            &kernel,
            "--initrd",
            &agent,
            "--store",
            &store_arg,
            "--image",
            image,
        ];
        args.extend_from_slice(extra);
        if !cmd.is_empty() {
            args.push("--");
            args.extend_from_slice(cmd);
        }
        run_peapod(&args)
    };

    let out = run("peapod/busybox:latest", &[], &["echo", "hi"])?;
    check(
        out.status.success() && out.stdout == b"hi\n",
        "the built-in image runs `echo hi`",
        &out,
    )?;

    // An image of our own: busybox, a user "app" (1000:1000), a run config.
    let busybox = fs::read(peapod::image::builtin::find_busybox()?)?;
    let layer = layer_tar(&[
        Entry::Dir("bin"),
        Entry::Exec("bin/busybox", &busybox),
        Entry::Symlink("bin/sh", "busybox"),
        Entry::Dir("etc"),
        Entry::File(
            "etc/passwd",
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/srv:/bin/sh\n",
        ),
        Entry::File("etc/group", "root:x:0:\napp:x:1000:\n"),
        Entry::Dir("srv"),
        Entry::Dir("tmp"),
    ])?;
    let layout = tmp.path().join("layout");
    peapod::image::layout::write_oci_layout(
        &layout,
        &[layer],
        serde_json::json!({
            "Entrypoint": ["/bin/busybox"],
            "Cmd": ["sh", "-c", "echo $GREETING from $(pwd) as $(id -u):$(id -g)"],
            "Env": ["PATH=/bin", "GREETING=hello"],
            "WorkingDir": "/srv",
            "User": "app",
        }),
        "v1",
    )?;
    let import = run_peapod(&[
        "image",
        "import",
        "--root",
        &store_arg,
        "--name",
        "e2e/app:1",
        &path(&layout)?,
    ])?;
    check(import.status.success(), "the layout imports", &import)?;
    let out = run("e2e/app:1", &[], &[])?;
    check(
        out.status.success() && out.stdout == b"hello from /srv as 1000:1000\n",
        "Entrypoint + Cmd run with the image's Env, WorkingDir and User",
        &out,
    )?;
    let out = run(
        "e2e/app:1",
        &["-e", "GREETING=bye", "-w", "/tmp", "-u", "0"],
        &["sh", "-c", "echo $GREETING from $(pwd) as $(id -u)"],
    )?;
    check(
        out.status.success() && out.stdout == b"bye from /tmp as 0\n",
        "CMD replaces Cmd (after the Entrypoint); -e, -w, -u override the image",
        &out,
    )?;
    Ok(())
}
