//! The network device in a VMM config: which inherited tap, which MAC, which MTU.

use std::os::fd::RawFd;

use serde::{Deserialize, Serialize};

use super::tap::{TapError, check_tap_fd};

/// The guest's MTU unless told otherwise.
pub const DEFAULT_MTU: u16 = 1500;
/// The smallest MTU IPv4 allows (RFC 791); the largest is what the u16 holds, 65535.
pub const MIN_MTU: u16 = 68;

/// A virtio-net device backed by a tap the VMM inherited (see [`super::tap`]). In JSON:
/// `{"tap_fd": 3, "mac": "02:00:00:00:00:01", "mtu": 1500}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The number of the tap descriptor in the VMM process (inherited open, without
    /// close-on-exec).
    pub tap_fd: i32,
    /// The guest interface's MAC address, six hex octets separated by colons, unicast (for
    /// a made-up one, a locally administered address: first octet `02`).
    pub mac: String,
    /// The guest interface's MTU, [`MIN_MTU`]..=65535 (told to the guest through the
    /// device's config space).
    #[serde(default = "default_mtu")]
    pub mtu: u16,
}

fn default_mtu() -> u16 {
    DEFAULT_MTU
}

#[derive(Debug, thiserror::Error)]
pub enum NetConfigError {
    #[error(
        "net mac {0:?} is not a MAC address (--net-mac, \"mac\"): give six hex octets \
         separated by colons, e.g. 02:00:00:00:00:01"
    )]
    BadMac(String),
    #[error(
        "net mac {0} is a multicast or all-zero address (--net-mac, \"mac\"): give a unicast \
         address (first octet even, e.g. 02:..)"
    )]
    NotUnicast(String),
    #[error("net mtu {0} is too small (--net-mtu, \"mtu\"): give {MIN_MTU} to 65535")]
    Mtu(u16),
    #[error(transparent)]
    Tap(#[from] TapError),
}

impl NetConfig {
    /// The MAC as bytes, checked.
    pub fn mac_bytes(&self) -> Result<[u8; 6], NetConfigError> {
        let mac = parse_mac(&self.mac).ok_or_else(|| NetConfigError::BadMac(self.mac.clone()))?;
        if mac[0] & 1 != 0 || mac == [0; 6] {
            return Err(NetConfigError::NotUnicast(self.mac.clone()));
        }
        Ok(mac)
    }

    /// Checks the MAC and MTU, which mean the same in any process.
    pub fn check_fields(&self) -> Result<(), NetConfigError> {
        self.mac_bytes()?;
        if self.mtu < MIN_MTU {
            return Err(NetConfigError::Mtu(self.mtu));
        }
        if self.tap_fd < 0 {
            return Err(TapError::Negative(self.tap_fd).into());
        }
        Ok(())
    }

    /// Everything: the fields, and that `tap_fd` is an open tap with the right flags *in
    /// this process*, so only the VMM process itself can call this meaningfully.
    pub fn validate(&self) -> Result<(), NetConfigError> {
        self.check_fields()?;
        check_tap_fd(self.tap_fd as RawFd)?;
        Ok(())
    }
}

/// `aa:bb:cc:dd:ee:ff` (either case) as bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut out {
        let part = parts.next()?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    fn net(tap_fd: i32, mac: &str, mtu: u16) -> NetConfig {
        NetConfig {
            tap_fd,
            mac: mac.into(),
            mtu,
        }
    }

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(
            parse_mac("02:00:0a:FF:10:01"),
            Some([2, 0, 0x0a, 0xff, 0x10, 1])
        );
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:01:02",
            "02-00-00-00-00-01",
            "2:0:0:0:0:1",
            "02:00:00:00:00:+1",
            "02:00:00:00:00:0g",
            "02:00:00:00:00:01:",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_fields_are_checked_with_the_fix_named() {
        // (config, expected error substring; None = fine)
        let table: &[(NetConfig, Option<&str>)] = &[
            (net(3, "02:00:00:00:00:01", 1500), None),
            (net(0, "52:54:00:12:34:56", MIN_MTU), None),
            (net(3, "02:00:00:00:00:01", 65535), None),
            (net(3, "02:00:00:00:00", 1500), Some("--net-mac")),
            (net(3, "zz:00:00:00:00:01", 1500), Some("six hex octets")),
            (net(3, "01:00:5e:00:00:01", 1500), Some("unicast")),
            (net(3, "00:00:00:00:00:00", 1500), Some("unicast")),
            (net(3, "02:00:00:00:00:01", 67), Some("--net-mtu")),
            (net(3, "02:00:00:00:00:01", 0), Some("68 to 65535")),
            (net(-1, "02:00:00:00:00:01", 1500), Some("--net-fd")),
        ];
        for (config, want) in table {
            match (config.check_fields(), want) {
                (Ok(()), None) => {}
                (Err(e), Some(want)) => assert!(e.to_string().contains(want), "{config:?}: {e}"),
                (got, _) => panic!("{config:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn a_descriptor_that_is_closed_or_not_a_tap_is_refused() {
        let (r, _w) = std::io::pipe().unwrap();
        let err = net(r.as_raw_fd(), "02:00:00:00:00:01", 1500)
            .validate()
            .unwrap_err();
        assert!(
            matches!(err, NetConfigError::Tap(TapError::NotTap { .. })),
            "{err}"
        );
        assert!(err.to_string().contains("not a tap"), "{err}");
        // A number far above any descriptor a test process has open (a just-closed one could
        // be reused by a test running in parallel).
        let err = net(999_999, "02:00:00:00:00:01", 1500)
            .validate()
            .unwrap_err();
        assert!(
            matches!(err, NetConfigError::Tap(TapError::NotOpen { .. })),
            "{err}"
        );
        assert!(err.to_string().contains("not an open descriptor"), "{err}");
    }

    #[test]
    fn json_is_strict_and_the_mtu_defaults() {
        let c: NetConfig =
            serde_json::from_str(r#"{"tap_fd": 3, "mac": "02:00:00:00:00:01"}"#).unwrap();
        assert_eq!(c, net(3, "02:00:00:00:00:01", DEFAULT_MTU));
        let err = serde_json::from_str::<NetConfig>(
            r#"{"tap_fd": 3, "mac": "02:00:00:00:00:01", "ifname": "tap0"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `ifname`"), "{err}");
        assert!(serde_json::from_str::<NetConfig>(r#"{"tap_fd": 3}"#).is_err());
    }
}
