//! A client for the OCI distribution API (the pull half): manifests and blobs over HTTPS
//! (system roots) or, for registries on this machine or with `insecure`, plain HTTP;
//! anonymous access, HTTP basic auth, and the bearer token flow (a 401 with
//! `WWW-Authenticate: Bearer realm=...,service=...,scope=...` sends us to the realm for a
//! token, with the credentials if we have any).
//!
//! Nothing here trusts the registry: manifests are size-capped and checked against the
//! digest asked for (or the `Docker-Content-Digest` it claims), blobs are read at most to
//! their descriptor's size and verified by [`crate::image::store::Staging`] before they count.

pub mod auth;
pub mod reference;

use std::io::{self, Read};
use std::time::Duration;

use ureq::http::{Response, StatusCode};

use self::auth::{Challenge, Credentials, parse_challenges};
use self::reference::{RegistryRef, is_loopback};
use super::digest::Digest;
use super::manifest::{DOCKER_MANIFEST, DOCKER_MANIFEST_LIST};
use super::store::MAX_JSON_BLOB;

/// The manifest kinds peapod reads, as the `Accept` header of manifest requests.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// Error bodies and token responses are read up to this size.
const MAX_SMALL_BODY: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot reach registry {registry} ({url}): {reason}{hint}")]
    Http {
        registry: String,
        url: String,
        /// The HTTP client's error, flattened (its chain repeats itself).
        reason: String,
        hint: &'static str,
    },
    #[error("registry {registry} refused access to {repository} ({status}{detail}): {fix}")]
    Unauthorized {
        registry: String,
        repository: String,
        status: u16,
        detail: String,
        fix: &'static str,
    },
    #[error("{what} not found on {registry}: {url} answered 404{detail}")]
    NotFound {
        registry: String,
        what: String,
        url: String,
        detail: String,
    },
    #[error("{url} answered {status}{detail}")]
    Status {
        url: String,
        status: u16,
        detail: String,
    },
    #[error("token endpoint {url} gave no usable token: {reason}")]
    Token { url: String, reason: String },
    #[error("registry {registry} asks for {scheme} authentication, which peapod does not speak")]
    UnsupportedAuth { registry: String, scheme: String },
    #[error(
        "manifest of {reference} does not match its digest: expected {expected}, got {actual}: \
         the registry (or something between) is serving wrong content"
    )]
    ManifestDigest {
        reference: String,
        expected: String,
        actual: Digest,
    },
    #[error("manifest of {reference} is more than {MAX_JSON_BLOB} bytes: refusing it")]
    ManifestTooLarge { reference: String },
    #[error("cannot read {url}")]
    Read {
        url: String,
        #[source]
        source: io::Error,
    },
}

/// How to talk to a registry.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// Use plain HTTP even for a registry that is not on this machine.
    pub insecure: bool,
    /// Credentials to use; else what the auth files have for the registry, else none.
    pub credentials: Option<Credentials>,
}

/// A manifest (or index) as the registry sent it.
#[derive(Debug)]
pub struct FetchedManifest {
    pub bytes: Vec<u8>,
    /// The `Content-Type` without parameters (may be empty; then the JSON's `mediaType`).
    pub media_type: String,
    pub digest: Digest,
}

/// An open connection's worth of state for one repository on one registry: the base URL,
/// the credentials and the current `Authorization` header.
pub struct Client {
    agent: ureq::Agent,
    registry: String,
    repository: String,
    base: String,
    credentials: Option<Credentials>,
    authorization: Option<String>,
}

impl Client {
    pub fn new(reference: &RegistryRef, opts: &ClientOptions) -> Self {
        let plain = opts.insecure || is_loopback(&reference.registry);
        let scheme = if plain { "http" } else { "https" };
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(120)))
            .timeout_per_read(Some(Duration::from_secs(120)))
            .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost)
            .user_agent(concat!("peapod/", env!("CARGO_PKG_VERSION")))
            .tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::PlatformVerifier)
                    .build(),
            );
        if is_loopback(&reference.registry) {
            // A proxy from the environment cannot reach this machine's registry.
            config = config.proxy(None);
        }
        let credentials = opts
            .credentials
            .clone()
            .or_else(|| auth::from_auth_files(&reference.registry));
        Self {
            agent: config.build().new_agent(),
            registry: reference.registry.clone(),
            repository: reference.repository.clone(),
            base: format!(
                "{scheme}://{}/v2/{}",
                reference.api_host(),
                reference.repository
            ),
            credentials,
            authorization: None,
        }
    }

    /// Fetches a manifest or index by tag or digest. With a digest reference the bytes
    /// must hash to it; with a tag, to the `Docker-Content-Digest` the registry names
    /// (when it names a sha256 one).
    pub fn manifest(&mut self, reference: &str) -> Result<FetchedManifest, RegistryError> {
        let url = format!("{}/manifests/{reference}", self.base);
        let response = self.get(
            &url,
            Some(MANIFEST_ACCEPT),
            &format!("manifest {reference}"),
        )?;
        let media_type = header(&response, "content-type")
            .map(|v| v.split(';').next().unwrap_or("").trim().to_string())
            .unwrap_or_default();
        let claimed = header(&response, "docker-content-digest");
        let mut bytes = Vec::new();
        response
            .into_body()
            .into_reader()
            .take(MAX_JSON_BLOB + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| RegistryError::Read {
                url: url.clone(),
                source,
            })?;
        let shown = format!("{}/{}:{reference}", self.registry, self.repository);
        if bytes.len() as u64 > MAX_JSON_BLOB {
            return Err(RegistryError::ManifestTooLarge { reference: shown });
        }
        let digest = Digest::of_bytes(&bytes);
        let expected = Digest::parse(reference)
            .ok()
            .map(|d| d.to_string())
            .or_else(|| claimed.filter(|c| c.starts_with("sha256:")));
        if let Some(expected) = expected
            && expected != digest.to_string()
        {
            return Err(RegistryError::ManifestDigest {
                reference: shown,
                expected,
                actual: digest,
            });
        }
        Ok(FetchedManifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// Opens a blob for streaming; the caller bounds and verifies what it reads.
    pub fn blob(&mut self, digest: &Digest) -> Result<impl Read + use<>, RegistryError> {
        let url = format!("{}/blobs/{digest}", self.base);
        let response = self.get(&url, None, &format!("blob {digest}"))?;
        Ok(BlobReader {
            url,
            inner: response.into_body().into_reader(),
        })
    }

    /// A GET with the current authorization; on a 401 it answers the challenge once and
    /// tries again.
    fn get(
        &mut self,
        url: &str,
        accept: Option<&str>,
        what: &str,
    ) -> Result<Response<ureq::Body>, RegistryError> {
        let mut authenticated = false;
        loop {
            let mut request = self.agent.get(url);
            if let Some(accept) = accept {
                request = request.header("Accept", accept);
            }
            if let Some(authorization) = &self.authorization {
                request = request.header("Authorization", authorization);
            }
            let response = request.call().map_err(|e| self.http_error(url, e))?;
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            if status == StatusCode::UNAUTHORIZED && !authenticated {
                let challenges: Vec<Challenge> = response
                    .headers()
                    .get_all("www-authenticate")
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(parse_challenges)
                    .collect();
                self.authenticate(&challenges, response)?;
                authenticated = true;
                continue;
            }
            let detail = error_detail(response);
            return Err(match status.as_u16() {
                401 | 403 => self.unauthorized(status.as_u16(), detail),
                404 => RegistryError::NotFound {
                    registry: self.registry.clone(),
                    what: format!("{what} of {}", self.repository),
                    url: url.to_string(),
                    detail,
                },
                other => RegistryError::Status {
                    url: url.to_string(),
                    status: other,
                    detail,
                },
            });
        }
    }

    /// Sets `authorization` from a 401's challenges: basic with our credentials, or a
    /// bearer token from the realm the challenge names.
    fn authenticate(
        &mut self,
        challenges: &[Challenge],
        response: Response<ureq::Body>,
    ) -> Result<(), RegistryError> {
        if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            drop(response);
            let token = self.fetch_token(bearer)?;
            self.authorization = Some(format!("Bearer {token}"));
            return Ok(());
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            return match &self.credentials {
                Some(creds) => {
                    self.authorization = Some(creds.basic_header());
                    Ok(())
                }
                None => Err(self.unauthorized(401, error_detail(response))),
            };
        }
        match challenges.first() {
            Some(other) => Err(RegistryError::UnsupportedAuth {
                registry: self.registry.clone(),
                scheme: other.scheme.clone(),
            }),
            None => Err(self.unauthorized(401, error_detail(response))),
        }
    }

    /// The token flow of the distribution spec: GET realm?service=..&scope=.. (basic auth
    /// with our credentials if we have them); the answer is `{"token": ...}` or
    /// `{"access_token": ...}`.
    fn fetch_token(&self, challenge: &Challenge) -> Result<String, RegistryError> {
        let realm = challenge
            .param("realm")
            .ok_or_else(|| RegistryError::Token {
                url: format!("(registry {})", self.registry),
                reason: "the Bearer challenge names no realm".to_string(),
            })?;
        if !(realm.starts_with("https://") || realm.starts_with("http://")) {
            return Err(RegistryError::Token {
                url: realm.to_string(),
                reason: "the realm is not an http(s) URL".to_string(),
            });
        }
        let scope = challenge
            .param("scope")
            .map(str::to_string)
            .unwrap_or_else(|| format!("repository:{}:pull", self.repository));
        let mut url = realm.to_string();
        let mut sep = if realm.contains('?') { '&' } else { '?' };
        if let Some(service) = challenge.param("service") {
            url.push_str(&format!("{sep}service={}", percent_encode(service)));
            sep = '&';
        }
        url.push_str(&format!("{sep}scope={}", percent_encode(&scope)));
        let mut request = self.agent.get(&url);
        if let Some(creds) = &self.credentials {
            request = request.header("Authorization", creds.basic_header());
        }
        let response = request.call().map_err(|e| self.http_error(&url, e))?;
        let status = response.status().as_u16();
        if status == 401 || status == 403 {
            return Err(self.unauthorized(status, error_detail(response)));
        }
        if !response.status().is_success() {
            return Err(RegistryError::Token {
                url,
                reason: format!("it answered {status}{}", error_detail(response)),
            });
        }
        let mut body = Vec::new();
        response
            .into_body()
            .into_reader()
            .take(MAX_SMALL_BODY)
            .read_to_end(&mut body)
            .map_err(|source| RegistryError::Read {
                url: url.clone(),
                source,
            })?;
        let json: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| RegistryError::Token {
                url: url.clone(),
                reason: format!("not JSON: {e}"),
            })?;
        ["token", "access_token"]
            .iter()
            .find_map(|k| json.get(*k).and_then(|v| v.as_str()))
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_string)
            .ok_or_else(|| RegistryError::Token {
                url,
                reason: "no \"token\" or \"access_token\" in the answer".to_string(),
            })
    }

    fn unauthorized(&self, status: u16, detail: String) -> RegistryError {
        RegistryError::Unauthorized {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            status,
            detail,
            fix: if self.credentials.is_some() {
                "check the user name and password (--creds, or the auth file)"
            } else {
                "pass --creds USER:PASSWORD, or log in with podman/skopeo/docker so that an \
                 auth file has credentials for it"
            },
        }
    }

    fn http_error(&self, url: &str, source: ureq::Error) -> RegistryError {
        let reason = source.to_string();
        // rustls' errors often arrive wrapped in io errors: judge by the words too.
        let tls = matches!(source, ureq::Error::Tls(_) | ureq::Error::Rustls(_))
            || [
                "certificate",
                "InvalidContentType",
                "corrupt message",
                "handshake",
            ]
            .iter()
            .any(|word| reason.contains(word));
        let hint = match &source {
            _ if tls => {
                " (if this registry speaks plain HTTP, pass --insecure; if its certificate \
                 comes from a private CA, add the CA to the system's roots: \
                 /usr/local/share/ca-certificates, then update-ca-certificates)"
            }
            ureq::Error::ConnectionFailed => " (is the registry running?)",
            ureq::Error::Io(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                " (is the registry running?)"
            }
            _ => "",
        };
        RegistryError::Http {
            registry: self.registry.clone(),
            url: url.to_string(),
            reason,
            hint,
        }
    }
}

/// A blob download; read errors name the URL.
struct BlobReader {
    url: String,
    inner: ureq::BodyReader<'static>,
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner
            .read(buf)
            .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", self.url)))
    }
}

fn header(response: &Response<ureq::Body>, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The registry's own words for an error (`{"errors":[{"code":..,"message":..}]}`), as
/// `: CODE: message`, or nothing.
fn error_detail(response: Response<ureq::Body>) -> String {
    let mut body = Vec::new();
    let _ = response
        .into_body()
        .into_reader()
        .take(64 * 1024)
        .read_to_end(&mut body);
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return String::new();
    };
    let Some(errors) = json.get("errors").and_then(|e| e.as_array()) else {
        return String::new();
    };
    let parts: Vec<String> = errors
        .iter()
        .take(3)
        .map(|e| {
            let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("");
            let message = e.get("message").and_then(|m| m.as_str()).unwrap_or("");
            format!("{code}: {message}")
                .chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect()
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(": {}", parts.join("; "))
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether a manifest's media type (from `Content-Type` or its JSON) is an index.
pub fn is_index_type(media_type: &str) -> bool {
    media_type == "application/vnd.oci.image.index.v1+json" || media_type == DOCKER_MANIFEST_LIST
}

/// Whether a media type is one of the manifests peapod reads.
pub fn is_manifest_type(media_type: &str) -> bool {
    media_type == "application/vnd.oci.image.manifest.v1+json" || media_type == DOCKER_MANIFEST
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn percent_encoding_of_token_parameters() {
        assert_eq!(
            percent_encode("repository:library/busybox:pull"),
            "repository%3Alibrary%2Fbusybox%3Apull"
        );
        assert_eq!(percent_encode("registry.docker.io"), "registry.docker.io");
    }
}
