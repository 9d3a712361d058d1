//! [`MacAddr`]: an Ethernet address, parsed from and shown as `aa:bb:cc:dd:ee:ff`.

use std::fmt;
use std::str::FromStr;

/// A 48-bit Ethernet (MAC) address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a MAC address: write six two-digit hex bytes separated by ':', like 02:42:ac:11:00:02"
)]
pub struct MacAddrError(String);

impl MacAddr {
    /// The bytes of a netlink `IFLA_ADDRESS`, when they are an Ethernet address.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(MacAddr)
    }

    /// A group (multicast or broadcast) address: never an interface's own.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }
}

impl FromStr for MacAddr {
    type Err = MacAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || MacAddrError(s.chars().take(40).collect());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_shows_colon_hex() {
        let mac: MacAddr = "02:42:AC:11:00:0f".parse().unwrap();
        assert_eq!(mac.0, [0x02, 0x42, 0xac, 0x11, 0x00, 0x0f]);
        assert_eq!(mac.to_string(), "02:42:ac:11:00:0f");
        assert!(!mac.is_multicast());
        assert!(
            "ff:ff:ff:ff:ff:ff"
                .parse::<MacAddr>()
                .unwrap()
                .is_multicast()
        );
        for bad in [
            "",
            "02:42:ac:11:00",
            "02:42:ac:11:00:0f:00",
            "02-42-ac-11-00-0f",
            "2:42:ac:11:00:0f",
            "02:42:ac:11:00:0g",
            "+2:42:ac:11:00:0f",
            "02:42:ac:11:00:0f:",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?}");
        }
        assert_eq!(MacAddr::from_slice(&[1, 2, 3]), None);
    }
}
