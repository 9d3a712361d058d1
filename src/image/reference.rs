//! Image names: `[HOST[:PORT]/]PATH[:TAG]`, the tag `latest` when none is given.
//!
//! Names are stored as written (no `docker.io/library/` added): a registry client that pulls
//! will normalize its own names before it stores them.

use std::fmt;

#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("image name is empty: give NAME[:TAG], e.g. peapod/busybox:latest")]
    Empty,
    #[error(
        "image name {0:?} is not valid: use lowercase letters, digits and . _ - separated by /, \
         then an optional :TAG (e.g. example.com:5000/team/app:1.2)"
    )]
    BadName(String),
    #[error(
        "image tag {tag:?} in {name:?} is not valid: a tag is 1 to 128 of letters, digits, _ . - \
         and does not start with . or -"
    )]
    BadTag { name: String, tag: String },
}

/// A validated image name with its tag.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageName {
    repository: String,
    tag: String,
}

impl ImageName {
    pub fn parse(text: &str) -> Result<Self, ReferenceError> {
        if text.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let last_slash = text.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match text[last_slash..].rfind(':') {
            Some(i) => (&text[..last_slash + i], &text[last_slash + i + 1..]),
            None => (text, "latest"),
        };
        if !valid_repository(repository) {
            return Err(ReferenceError::BadName(text.to_string()));
        }
        if !valid_tag(tag) {
            return Err(ReferenceError::BadTag {
                name: text.to_string(),
                tag: tag.to_string(),
            });
        }
        Ok(Self {
            repository: repository.to_string(),
            tag: tag.to_string(),
        })
    }

    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.repository, self.tag)
    }
}

impl std::str::FromStr for ImageName {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn valid_repository(repository: &str) -> bool {
    if repository.len() > 255 {
        return false;
    }
    let mut parts = repository.split('/').peekable();
    let mut first = true;
    while let Some(part) = parts.next() {
        let has_more = parts.peek().is_some();
        // The first of several parts may be a registry host, with a port and capitals.
        let ok = if first && has_more && looks_like_host(part) {
            valid_host(part)
        } else {
            valid_path_component(part)
        };
        if !ok {
            return false;
        }
        first = false;
    }
    true
}

fn looks_like_host(part: &str) -> bool {
    part.contains('.') || part.contains(':') || part == "localhost"
}

fn valid_host(part: &str) -> bool {
    let (host, port) = match part.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (part, None),
    };
    let host_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or any number of `-`.
fn valid_path_component(part: &str) -> bool {
    let bytes = part.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &part[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_tags() {
        let n = ImageName::parse("peapod/busybox").unwrap();
        assert_eq!(n.to_string(), "peapod/busybox:latest");
        let n = ImageName::parse("example.com:5000/team/app:1.2").unwrap();
        assert_eq!(n.repository(), "example.com:5000/team/app");
        assert_eq!(n.tag(), "1.2");
        assert_eq!(
            ImageName::parse("localhost/a_b__c-d--e:v").unwrap().tag(),
            "v"
        );
        for bad in [
            "", "Upper", "a//b", "/abs", "a/", "a:", "a:.x", "../x", "a b", "a:b:c", "-a",
        ] {
            assert!(ImageName::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
