use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::pod::layout::PodDirs;
use crate::pod::spec::PodVolume;
use crate::pod::state::PodStatus;

const VALUE: &str = "s3cr3t-value";

fn store() -> (tempfile::TempDir, SecretStore) {
    let tmp = tempfile::tempdir().unwrap();
    let store = SecretStore::new(tmp.path().join("root/secrets"));
    (tmp, store)
}

fn secret(name: &str, pairs: &[(&str, &str)]) -> Secret {
    let mut s = Secret::new(name);
    for (k, v) in pairs {
        s.data.insert((*k).into(), v.as_bytes().to_vec());
    }
    s
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn create_get_list_remove_round_trip() {
    let (_tmp, store) = store();
    assert!(store.list().unwrap().is_empty(), "no directory yet: none");
    let db = secret("db", &[("password", VALUE), ("user", "admin")]);
    store.create(&db, false).unwrap();
    store
        .create(&secret("api.example.com", &[("token", "t")]), false)
        .unwrap();

    assert_eq!(store.get("db").unwrap(), db);
    let list = store.list().unwrap();
    let names: Vec<&str> = list.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["api.example.com", "db"]);
    assert_eq!(list[1].keys, ["password", "user"]);
    let age = SystemTime::now()
        .duration_since(list[1].created_at)
        .unwrap();
    assert!(age.as_secs() < 60, "created now: {age:?}");

    store.remove("db").unwrap();
    assert!(matches!(store.get("db"), Err(SecretError::NotFound { .. })));
    assert!(matches!(
        store.remove("db"),
        Err(SecretError::NotFound { .. })
    ));
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn the_directory_is_0700_and_each_file_0600() {
    let (_tmp, store) = store();
    store.create(&secret("db", &[("k", VALUE)]), false).unwrap();
    assert_eq!(mode(store.dir()), 0o700);
    assert_eq!(mode(&store.dir().join("db.json")), 0o600);

    // A directory someone made looser is tightened on the next write.
    fs::set_permissions(store.dir(), fs::Permissions::from_mode(0o755)).unwrap();
    store
        .create(&secret("db", &[("k", "other")]), true)
        .unwrap();
    assert_eq!(mode(store.dir()), 0o700);
    assert_eq!(mode(&store.dir().join("db.json")), 0o600);
}

#[test]
fn an_existing_secret_is_kept_unless_replaced() {
    let (_tmp, store) = store();
    store.create(&secret("db", &[("k", "one")]), false).unwrap();
    let err = store
        .create(&secret("db", &[("k", VALUE)]), false)
        .unwrap_err();
    assert!(matches!(err, SecretError::Exists { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("peapod secret rm db"), "{msg}");
    assert!(msg.contains("--replace"), "{msg}");
    assert_eq!(store.get("db").unwrap().data["k"], b"one");

    store.create(&secret("db", &[("k2", VALUE)]), true).unwrap();
    let got = store.get("db").unwrap();
    assert_eq!(got.data.len(), 1, "replaced whole");
    assert_eq!(got.data["k2"], VALUE.as_bytes());
}

#[test]
fn bad_names_and_keys_are_refused() {
    let long = "a".repeat(MAX_NAME_LEN + 1);
    for name in [
        "", "Db", "db_1", "-db", "db-", ".db", "db.", "a..b", "a/b", "..", "a.-b", "é", &long,
    ] {
        let err = validate_name(name).unwrap_err();
        assert!(matches!(err, SecretError::InvalidName { .. }), "{name:?}");
    }
    let max = "a".repeat(MAX_NAME_LEN);
    for name in ["db", "a", "0", "db-1", "api.example.com", "a-b.c-d", &max] {
        validate_name(name).unwrap_or_else(|e| panic!("{name:?}: {e}"));
    }

    let long_key = "k".repeat(MAX_KEY_LEN + 1);
    for key in ["", ".", "..", "a/b", "a b", "k=v", "é", &long_key] {
        let err = validate_key("db", key).unwrap_err();
        assert!(matches!(err, SecretError::InvalidKey { .. }), "{key:?}");
        assert!(err.to_string().contains("secret db"), "{err}");
    }
    let max_key = "k".repeat(MAX_KEY_LEN);
    for key in [
        "password", "tls.crt", ".dotfile", "A_B-c.9", "...", &max_key,
    ] {
        validate_key("db", key).unwrap_or_else(|e| panic!("{key:?}: {e}"));
    }

    let (_tmp, store) = store();
    let err = store
        .create(&secret("db", &[("a/b", VALUE)]), false)
        .unwrap_err();
    assert!(matches!(err, SecretError::InvalidKey { .. }));
    assert!(matches!(
        store.get("../x"),
        Err(SecretError::InvalidName { .. })
    ));
    assert!(matches!(
        store.remove("../x"),
        Err(SecretError::InvalidName { .. })
    ));
}

#[test]
fn values_are_limited_to_1_mib() {
    let (_tmp, store) = store();
    let mut s = Secret::new("big");
    s.data.insert("a".into(), vec![b'x'; MAX_DATA_BYTES - 1]);
    s.data.insert("b".into(), vec![b'y']);
    store.create(&s, false).unwrap();
    assert_eq!(store.get("big").unwrap(), s);

    s.data.insert("c".into(), vec![b'z']);
    let err = store.create(&s, true).unwrap_err();
    assert!(matches!(err, SecretError::TooLarge { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("secret big") && msg.contains("1 MiB"), "{msg}");
}

#[test]
fn no_value_in_debug_or_errors() {
    let s = secret("db", &[("password", VALUE)]);
    let debug = format!("{s:?}");
    assert!(!debug.contains(VALUE), "{debug}");
    assert!(debug.contains("password") && debug.contains("<redacted 12 bytes>"));

    let (_tmp, store) = store();
    store.create(&s, false).unwrap();
    let mut errors = vec![
        store.create(&s, false).unwrap_err(),
        store.get("nope").unwrap_err(),
        store.remove("nope").unwrap_err(),
        store
            .create(&secret("db", &[("bad key", VALUE)]), true)
            .unwrap_err(),
    ];
    let mut big = s.clone();
    big.data
        .insert("pad".into(), [VALUE.as_bytes(); 100_000].concat());
    errors.push(store.create(&big, true).unwrap_err());

    // Damaged files: parser messages would quote the value; ours do not.
    let path = store.dir().join("db.json");
    for text in [
        format!(r#"{{"name":"db","created_at":"2024-01-01T00:00:00Z","data":{{"k":"{VALUE}!"}}}}"#),
        format!(
            r#"{{"name":"db","created_at":"2024-01-01T00:00:00Z","data":{{"k":1}},"{VALUE}":1}}"#
        ),
        format!(r#"{{"name":"db","created_at":"2024-01-01T00:00:00Z","data":{{"k":{VALUE}}}}}"#),
        format!(r#"{{"name":"db","created_at":"{VALUE}","data":{{}}}}"#),
    ] {
        fs::write(&path, text).unwrap();
        errors.push(store.get("db").unwrap_err());
    }
    for err in &errors {
        let msg = err.to_string();
        assert!(!msg.contains(VALUE), "{msg}");
        assert!(!format!("{err:?}").contains(VALUE), "{err:?}");
    }
    // Damaged files are skipped by list, with no value in the warning either.
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn the_file_holds_base64_and_no_temporary_is_left() {
    let (_tmp, store) = store();
    store
        .create(&secret("db", &[("password", VALUE)]), false)
        .unwrap();
    store
        .create(&secret("db", &[("password", VALUE)]), true)
        .unwrap();
    let _ = store.create(&secret("db", &[("password", VALUE)]), false);

    let files: Vec<String> = fs::read_dir(store.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files, ["db.json"]);

    let text = fs::read_to_string(store.dir().join("db.json")).unwrap();
    assert!(!text.contains(VALUE), "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["name"], "db");
    assert_eq!(json["data"]["password"], STANDARD.encode(VALUE));
    let created = json["created_at"].as_str().unwrap();
    assert!(
        crate::pod::state::parse_rfc3339(created).is_some(),
        "{created}"
    );
}

#[test]
fn a_symlinked_secret_file_is_not_followed() {
    let (tmp, store) = store();
    store.create(&secret("db", &[("k", VALUE)]), false).unwrap();
    let elsewhere = tmp.path().join("elsewhere.json");
    fs::rename(store.dir().join("db.json"), &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, store.dir().join("db.json")).unwrap();
    assert!(matches!(store.get("db"), Err(SecretError::Io { .. })));
}

#[test]
fn only_live_pods_that_refer_to_a_secret_use_it() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = Registry::new(PodDirs::new(
        tmp.path().join("run"),
        tmp.path().join("pods"),
    ));
    let volume = |secret: &str| PodVolume {
        name: "creds".into(),
        source: PodVolumeSource::Secret {
            secret_name: secret.into(),
            optional: false,
        },
    };

    let mut by_volume = crate::pod::spec::tests::spec("by-volume");
    by_volume.volumes.push(volume("db"));
    let (_, _lock_volume) = registry.create(by_volume).unwrap();

    let mut by_env = crate::pod::spec::tests::spec("by-env");
    by_env.containers[0].secret_env.push(SecretEnv::Key {
        env_name: "PASSWORD".into(),
        secret: "db".into(),
        key: "password".into(),
        optional: false,
    });
    let (_, _lock_env) = registry.create(by_env).unwrap();

    let mut by_init = crate::pod::spec::tests::spec("by-init");
    let mut init = crate::pod::spec::tests::container("init");
    init.secret_env.push(SecretEnv::All {
        secret: "db".into(),
        optional: true,
    });
    by_init.init_containers.push(init);
    let (_, _lock_init) = registry.create(by_init).unwrap();

    let mut other = crate::pod::spec::tests::spec("other");
    other.volumes.push(volume("api"));
    let (_, _lock_other) = registry.create(other).unwrap();

    // Exited: its record still names the secret, but it does not block.
    let mut exited = crate::pod::spec::tests::spec("exited");
    exited.volumes.push(volume("db"));
    let (record, lock) = registry.create(exited).unwrap();
    let mut state = registry.get(&record.id).unwrap().state;
    state.status = PodStatus::Exited { code: 0 };
    registry.save_state(&state).unwrap();
    drop(lock);

    // Created, but its supervisor is gone: shown as Failed, it does not block either.
    let mut orphan = crate::pod::spec::tests::spec("orphan");
    orphan.volumes.push(volume("db"));
    drop(registry.create(orphan).unwrap().1);

    let mut users = users_of(&registry, "db").unwrap();
    users.sort();
    assert_eq!(users, ["by-env", "by-init", "by-volume"]);
    assert_eq!(users_of(&registry, "api").unwrap(), ["other"]);
    assert!(users_of(&registry, "unused").unwrap().is_empty());
}
