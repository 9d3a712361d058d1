//! Registry references: `[HOST[:PORT]/]PATH[:TAG][@sha256:HEX]`, normalized as docker and
//! podman do: no host means Docker Hub (`docker.io`, whose API lives at
//! `registry-1.docker.io`), and a one-part Docker Hub path is under `library/`.

use std::fmt;

use crate::image::digest::{Digest, DigestError};
use crate::image::reference::{ImageName, ReferenceError};

/// The registry of names without a host.
pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's registry API is served.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

#[derive(Debug, thiserror::Error)]
pub enum RegistryRefError {
    #[error(transparent)]
    Name(#[from] ReferenceError),
    #[error("{reference:?}: {source}")]
    Digest {
        reference: String,
        #[source]
        source: DigestError,
    },
}

/// What to pull: a registry, a repository on it, and a tag or a digest (or both).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryRef {
    /// `host[:port]` as the user names it (`docker.io` for Docker Hub).
    pub registry: String,
    /// The repository path on the registry (`library/busybox`).
    pub repository: String,
    /// The tag; `latest` when neither a tag nor a digest is given.
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl RegistryRef {
    pub fn parse(text: &str) -> Result<Self, RegistryRefError> {
        let (name_part, digest) = match text.split_once('@') {
            Some((name, digest)) => {
                let digest = Digest::parse(digest).map_err(|source| RegistryRefError::Digest {
                    reference: text.to_string(),
                    source,
                })?;
                (name, Some(digest))
            }
            None => (text, None),
        };
        let last_slash = name_part.rfind('/').map_or(0, |i| i + 1);
        let has_tag = name_part[last_slash..].contains(':');
        let name = ImageName::parse(name_part)?;
        let (registry, path) = split_registry(name.repository());
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        let tag = if has_tag || digest.is_none() {
            Some(name.tag().to_string())
        } else {
            None
        };
        Ok(Self {
            registry: registry.to_string(),
            repository,
            tag,
            digest,
        })
    }

    /// What the manifest endpoint is asked for: the digest when there is one, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// The host (and port) the registry API is reached at.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// The name the image is stored under: `registry/repository:tag`, or `None` for a
    /// reference by digest alone (the caller names it).
    pub fn store_name(&self) -> Option<ImageName> {
        let tag = self.tag.as_deref()?;
        ImageName::parse(&format!("{}/{}:{}", self.registry, self.repository, tag)).ok()
    }
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Splits `host/path` into the registry host and the path; no host means Docker Hub.
fn split_registry(repository: &str) -> (&str, &str) {
    match repository.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first, rest)
        }
        _ => (DOCKER_HUB, repository),
    }
}

/// The registry-qualified form of a stored name (`busybox` -> `docker.io/library/busybox`),
/// so that an image pulled as `busybox` is found again by that name.
pub fn qualified(name: &ImageName) -> Option<ImageName> {
    let parsed = RegistryRef::parse(&name.to_string()).ok()?;
    parsed.store_name().filter(|q| q != name)
}

/// Whether a registry host is this machine (plain HTTP is the default there, as for
/// docker's and podman's `localhost` registries).
pub fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => registry,
    };
    host == "localhost"
        || host == "[::1]"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_names_are_normalized() {
        let r = RegistryRef::parse("busybox").unwrap();
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(r.manifest_reference(), "latest");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(
            r.store_name().unwrap().to_string(),
            "docker.io/library/busybox:latest"
        );
        let r = RegistryRef::parse("team/app:2").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io", "team/app")
        );
        assert_eq!(
            qualified(&ImageName::parse("busybox").unwrap())
                .unwrap()
                .to_string(),
            "docker.io/library/busybox:latest"
        );
        assert!(qualified(&ImageName::parse("docker.io/library/busybox").unwrap()).is_none());
    }

    #[test]
    fn hosts_ports_tags_and_digests() {
        let d = Digest::of_bytes(b"x");
        let r = RegistryRef::parse("127.0.0.1:5000/test/app:1").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "test/app");
        assert_eq!(r.tag.as_deref(), Some("1"));
        assert_eq!(r.api_host(), "127.0.0.1:5000");
        let r = RegistryRef::parse(&format!("localhost/app@{d}")).unwrap();
        assert_eq!(r.registry, "localhost");
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_reference(), d.to_string());
        assert!(r.store_name().is_none());
        let r = RegistryRef::parse(&format!("quay.io/a/b:v1@{d}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.manifest_reference(), d.to_string());
        assert_eq!(r.to_string(), format!("quay.io/a/b:v1@{d}"));
        assert!(RegistryRef::parse("app@sha256:abc").is_err());
        assert!(RegistryRef::parse("UPPER/x").is_err());
    }

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:41234",
            "127.1.2.3",
            "[::1]:80",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "docker.io",
            "10.0.0.1:5000",
            "localhost.example.com",
            "quay.io:443",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
