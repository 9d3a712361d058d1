//! Pod ids (64 lowercase hex digits, as docker's) and pod names (docker's rule).

use std::fmt;
use std::io::Read;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::PodError;

/// Hex digits in a full pod id.
pub const ID_LEN: usize = 64;
/// Hex digits in a short id, as `ps` shows it.
pub const SHORT_ID_LEN: usize = 12;
/// The longest pod name (a DNS label's length, so a name can become a hostname).
pub const MAX_NAME_LEN: usize = 63;

/// A pod's id: 64 lowercase hex digits (256 random bits), also its directories' names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodId(String);

impl PodId {
    /// A fresh random id from `/dev/urandom`.
    pub fn generate() -> Result<PodId, PodError> {
        let mut bytes = [0u8; ID_LEN / 2];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(|e| PodError::io("read random bytes from", "/dev/urandom", e))?;
        let mut hex = String::with_capacity(ID_LEN);
        for b in bytes {
            hex.push_str(&format!("{b:02x}"));
        }
        Ok(PodId(hex))
    }

    /// Checks `s` is 64 lowercase hex digits.
    pub fn parse(s: &str) -> Result<PodId, PodError> {
        if s.len() == ID_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(PodId(s.to_owned()))
        } else {
            Err(PodError::InvalidId { id: s.to_owned() })
        }
    }

    /// The full id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, as `ps` shows them.
    pub fn short(&self) -> &str {
        &self.0[..SHORT_ID_LEN]
    }
}

impl fmt::Display for PodId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for PodId {
    type Err = PodError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PodId::parse(s)
    }
}

impl Serialize for PodId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PodId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        PodId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Checks a pod name against docker's rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, 1 to 63
/// characters. So a name is one path component, never `.`/`..`, and never an option.
pub fn validate_name(name: &str) -> Result<(), PodError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(PodError::InvalidName {
            name: name.to_owned(),
        })
    }
}

/// A default name for a pod the user did not name: `pea-` and the id's first 8 hex digits.
/// A clash is possible (1 in 2^32 per pair); the registry then tries a fresh id.
pub fn generate_name(id: &PodId) -> String {
    format!("pea-{}", &id.as_str()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_valid_distinct_and_round_trip() {
        let a = PodId::generate().unwrap();
        let b = PodId::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(PodId::parse(a.as_str()).unwrap(), a);
        assert_eq!(a.short().len(), SHORT_ID_LEN);
        assert!(a.as_str().starts_with(a.short()));
        assert_eq!(a.to_string(), a.as_str());
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, format!("\"{a}\""));
        assert_eq!(serde_json::from_str::<PodId>(&json).unwrap(), a);
        let name = generate_name(&a);
        validate_name(&name).unwrap();
        assert_eq!(name, format!("pea-{}", &a.as_str()[..8]));
    }

    #[test]
    fn bad_ids_are_refused() {
        let good = "0123456789abcdef".repeat(4);
        PodId::parse(&good).unwrap();
        for bad in [
            String::new(),
            "abc".into(),
            good.to_uppercase(),
            format!("{good}0"),
            good[..63].to_string(),
            format!("{}g", &good[..63]),
            format!("../{}", &good[..61]),
        ] {
            assert!(PodId::parse(&bad).is_err(), "{bad:?}");
            assert!(
                serde_json::from_str::<PodId>(&format!("\"{bad}\"")).is_err(),
                "{bad:?}"
            );
        }
        assert!(serde_json::from_str::<PodId>("42").is_err());
    }

    #[test]
    fn name_rules() {
        let max = "a".repeat(63);
        for good in ["a", "A", "0", "web", "my-pod_1.2", "9lives", max.as_str()] {
            validate_name(good).unwrap_or_else(|e| panic!("{good:?}: {e}"));
        }
        let long = "a".repeat(64);
        for bad in [
            "",
            "a/b",
            "..",
            ".",
            ".hidden",
            "-rm",
            "_x",
            "a b",
            "é",
            "a\0b",
            "a:b",
            long.as_str(),
        ] {
            let err = validate_name(bad).expect_err(bad).to_string();
            assert!(err.contains("letters, digits"), "{err}");
        }
    }
}
