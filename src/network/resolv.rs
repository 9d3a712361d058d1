//! The host's upstream DNS servers, for pods whose CNI result names none.

use std::net::IpAddr;
use std::path::Path;

/// The host's resolver configuration.
pub const ETC_RESOLV_CONF: &str = "/etc/resolv.conf";
/// systemd-resolved's list of the real upstream servers (its stub in /etc/resolv.conf,
/// 127.0.0.53, is unreachable from a pod).
pub const SYSTEMD_RESOLV_CONF: &str = "/run/systemd/resolve/resolv.conf";

/// The host's upstream resolvers: the `nameserver`s of /etc/resolv.conf, or of
/// systemd-resolved's upstream list when /etc/resolv.conf names only loopback stubs.
/// Loopback addresses are never returned (they mean the host itself, not the pod); an
/// empty list means the host has none a pod could reach.
pub fn host_dns_servers() -> Vec<IpAddr> {
    dns_servers_from(Path::new(ETC_RESOLV_CONF), Path::new(SYSTEMD_RESOLV_CONF))
}

/// [`host_dns_servers`] with the two files named, for tests.
pub fn dns_servers_from(etc: &Path, systemd: &Path) -> Vec<IpAddr> {
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    let etc_text = read(etc);
    let servers = upstream(&etc_text);
    if servers.is_empty() && nameservers(&etc_text).iter().any(IpAddr::is_loopback) {
        return upstream(&read(systemd));
    }
    servers
}

fn upstream(text: &str) -> Vec<IpAddr> {
    nameservers(text)
        .into_iter()
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .collect()
}

/// The `nameserver` lines of a resolv.conf; addresses with a zone (`fe80::1%eth0`) and
/// anything unparsable are skipped.
fn nameservers(text: &str) -> Vec<IpAddr> {
    let mut found = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        if let Some(Ok(ip)) = words.next().map(str::parse::<IpAddr>)
            && !found.contains(&ip)
        {
            found.push(ip);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(etc: &str, systemd: Option<&str>) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let etc_path = dir.path().join("resolv.conf");
        let systemd_path = dir.path().join("systemd.conf");
        std::fs::write(&etc_path, etc).unwrap();
        if let Some(text) = systemd {
            std::fs::write(&systemd_path, text).unwrap();
        }
        dns_servers_from(&etc_path, &systemd_path)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn plain_resolv_conf_is_read() {
        let etc = "# comment\nsearch example.com\nnameserver 192.0.2.1\nnameserver  2001:db8::53\n\
                   nameserver 127.0.0.1\nnameserver fe80::1%eth0\nnameserver 192.0.2.1\noptions ndots:2\n";
        assert_eq!(
            servers(etc, Some("nameserver 9.9.9.9\n")),
            ["192.0.2.1", "2001:db8::53"]
        );
    }

    #[test]
    fn a_systemd_stub_defers_to_the_upstream_list() {
        let etc = "nameserver 127.0.0.53\noptions edns0 trust-ad\n";
        assert_eq!(
            servers(etc, Some("nameserver 10.0.0.2\nnameserver 127.0.0.1\n")),
            ["10.0.0.2"]
        );
        assert!(servers(etc, None).is_empty());
        assert!(servers("", Some("nameserver 10.0.0.2\n")).is_empty());
        assert!(servers("nameserver ::1\n", Some("nameserver ::1\n")).is_empty());
    }
}
