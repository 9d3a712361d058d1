//! Registry authentication: `WWW-Authenticate` challenges (RFC 7235, as the distribution
//! spec's token flow uses them), credentials given on the command line or found in the
//! auth files podman, skopeo and docker write (`auth.json`, `~/.docker/config.json`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// A user name and password (or token) for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({:?}, <hidden>)", self.username)
    }
}

impl Credentials {
    /// Parses `USER:PASSWORD` (the password may contain `:`).
    pub fn parse(text: &str) -> Option<Self> {
        let (username, password) = text.split_once(':')?;
        (!username.is_empty()).then(|| Self {
            username: username.to_string(),
            password: password.to_string(),
        })
    }

    /// The `Authorization` header value for HTTP basic auth.
    pub fn basic_header(&self) -> String {
        format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", self.username, self.password))
        )
    }
}

/// One challenge of a `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// Lowercased: `bearer`, `basic`, ...
    pub scheme: String,
    /// Parameter names lowercased, values unquoted.
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

/// Parses a `WWW-Authenticate` value into its challenges, e.g.
/// `Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a:pull"`.
/// Malformed parts end the parse; what was read before them is kept.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    let mut rest = header.trim_start();
    while !rest.is_empty() {
        // A token: either a new scheme or a parameter name of the current challenge.
        let end = rest
            .find(|c: char| c == '=' || c == ',' || c.is_whitespace())
            .unwrap_or(rest.len());
        let token = &rest[..end];
        let after = rest[end..].trim_start();
        if token.is_empty() {
            // A stray comma between parameters or challenges.
            rest = after.strip_prefix(',').unwrap_or(after).trim_start();
            if rest.len() == after.len() {
                break;
            }
            continue;
        }
        match after.strip_prefix('=') {
            Some(value_and_rest) if !out.is_empty() => {
                let value_and_rest = value_and_rest.trim_start();
                let (value, remaining) = match value_and_rest.strip_prefix('"') {
                    Some(quoted) => match unquote(quoted) {
                        Some(parsed) => parsed,
                        None => break,
                    },
                    None => {
                        let end = value_and_rest
                            .find(|c: char| c == ',' || c.is_whitespace())
                            .unwrap_or(value_and_rest.len());
                        (value_and_rest[..end].to_string(), &value_and_rest[end..])
                    }
                };
                if let Some(current) = out.last_mut() {
                    current.params.insert(token.to_ascii_lowercase(), value);
                }
                let remaining = remaining.trim_start();
                rest = remaining
                    .strip_prefix(',')
                    .unwrap_or(remaining)
                    .trim_start();
            }
            // token68 forms (`Basic abc==`) and a parameter before any scheme: not used by
            // registries; stop rather than guess.
            Some(_) => break,
            None => {
                out.push(Challenge {
                    scheme: token.to_ascii_lowercase(),
                    params: BTreeMap::new(),
                });
                rest = after.strip_prefix(',').unwrap_or(after).trim_start();
            }
        }
    }
    out
}

/// Reads a quoted string after its opening quote: the value and what follows the closing
/// quote, or `None` when it is not closed.
fn unquote(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, &text[i + 1..])),
            '\\' => value.push(chars.next()?.1),
            c => value.push(c),
        }
    }
    None
}

/// The auth files looked in, first match wins: `$REGISTRY_AUTH_FILE`, podman's
/// `$XDG_RUNTIME_DIR/containers/auth.json` and `~/.config/containers/auth.json`, docker's
/// `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`.
pub fn auth_files() -> Vec<PathBuf> {
    let env = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let home = env("HOME");
    let mut files = Vec::new();
    files.extend(env("REGISTRY_AUTH_FILE"));
    files.extend(env("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json")));
    match env("XDG_CONFIG_HOME") {
        Some(config) => files.push(config.join("containers/auth.json")),
        None => files.extend(
            home.as_ref()
                .map(|h| h.join(".config/containers/auth.json")),
        ),
    }
    match env("DOCKER_CONFIG") {
        Some(dir) => files.push(dir.join("config.json")),
        None => files.extend(home.as_ref().map(|h| h.join(".docker/config.json"))),
    }
    files
}

/// Credentials for `registry` from the first auth file that has them.
pub fn from_auth_files(registry: &str) -> Option<Credentials> {
    auth_files().into_iter().find_map(|path| {
        let bytes = std::fs::read(&path).ok()?;
        let found = lookup_auth_json(&bytes, registry);
        if found.is_some() {
            tracing::debug!(
                "registry credentials for {registry} from {}",
                path.display()
            );
        }
        found
    })
}

/// Finds `registry` in an auth file's `auths` map. Keys may be bare hosts, URLs, or (for
/// Docker Hub) docker's legacy `https://index.docker.io/v1/`. Credential helpers
/// (`credsStore`) are not run.
pub fn lookup_auth_json(bytes: &[u8], registry: &str) -> Option<Credentials> {
    let json: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let auths = json.get("auths")?.as_object()?;
    let wanted = |key: &str| {
        let host = key
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or("");
        host == registry
            || (registry == super::reference::DOCKER_HUB
                && matches!(host, "index.docker.io" | "registry-1.docker.io"))
    };
    auths
        .iter()
        .filter(|(key, _)| wanted(key))
        .find_map(|(_, entry)| {
            let encoded = entry.get("auth")?.as_str()?;
            let decoded = STANDARD.decode(encoded.trim()).ok()?;
            Credentials::parse(std::str::from_utf8(&decoded).ok()?)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_basic_challenges() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c[0].param("service"), Some("registry.docker.io"));
        assert_eq!(c[0].param("scope"), Some("repository:library/busybox:pull"));
        let c = parse_challenges(r#"Basic realm="Registry Realm", Bearer realm=x, error="a\"b""#);
        assert_eq!(c.len(), 2);
        assert_eq!(
            (c[0].scheme.as_str(), c[0].param("realm")),
            ("basic", Some("Registry Realm"))
        );
        assert_eq!(c[1].param("realm"), Some("x"));
        assert_eq!(c[1].param("error"), Some("a\"b"));
        assert!(parse_challenges("").is_empty());
        // Unclosed quotes and bare parameters do not panic; what parsed is kept.
        assert_eq!(parse_challenges(r#"Bearer realm="x"#).len(), 1);
        assert!(parse_challenges("=x, ,,").is_empty());
    }

    #[test]
    fn credentials_from_auth_json() {
        let auth = STANDARD.encode("me:pa:ss");
        let json = format!(
            r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},
                "127.0.0.1:5000":{{"auth":"{}"}}}}}}"#,
            STANDARD.encode("local:pw")
        );
        let hub = lookup_auth_json(json.as_bytes(), "docker.io").unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("me", "pa:ss")
        );
        let local = lookup_auth_json(json.as_bytes(), "127.0.0.1:5000").unwrap();
        assert_eq!(local.username, "local");
        assert!(lookup_auth_json(json.as_bytes(), "quay.io").is_none());
        assert!(lookup_auth_json(b"not json", "quay.io").is_none());
        assert_eq!(
            Credentials::parse("u:p").unwrap().basic_header(),
            format!("Basic {}", STANDARD.encode("u:p"))
        );
        assert!(Credentials::parse("nouser").is_none());
        assert!(!format!("{:?}", Credentials::parse("u:secret").unwrap()).contains("secret"));
    }
}
