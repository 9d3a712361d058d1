//! Published ports (`peapod run -p [IP:]HOSTPORT:CONTAINERPORT[/tcp|/udp]`, `hostPort` in pod
//! YAML): a small proxy in the pod's supervisor, as docker's `docker-proxy`.
//!
//! Why a proxy and not the CNI `portmap` plugin: the supervisor binds every host port before
//! the pod's network or VM exists, so a port in use, or two pods on one port, is a clear error
//! at `run` and nothing is half-created (iptables DNAT rules cannot tell that a port is
//! taken); `127.0.0.1` works without `route_localnet` and hairpin NAT; and the host needs no
//! netfilter modules for it. The price is a copy through the supervisor per connection, and
//! the pod sees the bridge's address as the client's (portmap keeps the client address).
//!
//! TCP: one thread accepts, each connection gets two copying threads to the pod's address.
//! UDP: one host socket; each client address gets its own socket connected to the pod, so
//! replies go back to the right client; a client idle for [`UDP_IDLE`] is forgotten.

use std::collections::{BTreeSet, HashMap};
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::pod::spec::{PodSpec, PortProtocol};

/// How long a connection to the pod may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a UDP client may be silent (both ways) before its mapping is dropped.
pub const UDP_IDLE: Duration = Duration::from_secs(60);
/// The largest UDP datagram.
const UDP_MAX: usize = 65_535;

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error(
        "-p {0:?}: expected [IP:]HOSTPORT:CONTAINERPORT[/tcp|/udp], e.g. -p 8080:80 or \
         -p 127.0.0.1:8080:80/tcp"
    )]
    Syntax(String),
    #[error("-p {spec:?}: {what} {value:?} is not a port: give 1 to 65535")]
    Port {
        spec: String,
        what: &'static str,
        value: String,
    },
    #[error("-p {spec:?}: {ip:?} is not an IP address")]
    Ip { spec: String, ip: String },
    #[error("-p {spec:?}: protocol {protocol:?} is not supported: use tcp or udp")]
    Protocol { spec: String, protocol: String },
    #[error("host port {0} is published twice in this pod: give each -p/hostPort its own port")]
    Duplicate(PublishedPort),
    #[error(
        "host port {port} cannot be published: {source}; another pod or program holds it \
         (`peapod port`, `ss -lntu`): choose another host port"
    )]
    InUse {
        port: PublishedPort,
        #[source]
        source: std::io::Error,
    },
    #[error("host port {port} cannot be published: {source}")]
    Bind {
        port: PublishedPort,
        #[source]
        source: std::io::Error,
    },
}

/// A host port forwarded to a port of the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishedPort {
    /// The host address listened on (`0.0.0.0`: all of them).
    pub host_ip: IpAddr,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: PortProtocol,
}

impl PublishedPort {
    fn host_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host_ip, self.host_port)
    }
}

impl std::fmt::Display for PublishedPort {
    /// docker's form: `0.0.0.0:8080->80/tcp`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}->{}/{}",
            self.host_addr(),
            self.container_port,
            protocol_name(self.protocol)
        )
    }
}

/// `tcp` or `udp`.
pub fn protocol_name(p: PortProtocol) -> &'static str {
    match p {
        PortProtocol::Tcp => "tcp",
        PortProtocol::Udp => "udp",
    }
}

/// Parses one `-p` value: `[IP:]HOSTPORT:CONTAINERPORT[/tcp|/udp]` (an IPv6 address in
/// brackets). The host address defaults to `0.0.0.0`, the protocol to tcp.
pub fn parse_publish(spec: &str) -> Result<PublishedPort, PortError> {
    let syntax = || PortError::Syntax(spec.to_string());
    let (addr, protocol) = match spec.rsplit_once('/') {
        Some((addr, proto)) => {
            let protocol = match proto.to_ascii_lowercase().as_str() {
                "tcp" => PortProtocol::Tcp,
                "udp" => PortProtocol::Udp,
                _ => {
                    return Err(PortError::Protocol {
                        spec: spec.into(),
                        protocol: proto.into(),
                    });
                }
            };
            (addr, protocol)
        }
        None => (spec, PortProtocol::Tcp),
    };
    let (rest, container) = addr.rsplit_once(':').ok_or_else(syntax)?;
    let (ip, host) = match rest.rsplit_once(':') {
        Some((ip, host)) => (Some(ip), host),
        None => (None, rest),
    };
    let port = |what: &'static str, value: &str| match value.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(PortError::Port {
            spec: spec.into(),
            what,
            value: value.into(),
        }),
    };
    let host_ip = match ip {
        None | Some("") => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Some(ip) => {
            let bare = ip
                .strip_prefix('[')
                .and_then(|i| i.strip_suffix(']'))
                .unwrap_or(ip);
            IpAddr::from_str(bare).map_err(|_| PortError::Ip {
                spec: spec.into(),
                ip: ip.into(),
            })?
        }
    };
    if host.is_empty() {
        return Err(syntax());
    }
    Ok(PublishedPort {
        host_ip,
        host_port: port("host port", host)?,
        container_port: port("container port", container)?,
        protocol,
    })
}

/// The ports a pod publishes: every container port that has a host port.
pub fn published_ports(spec: &PodSpec) -> Result<Vec<PublishedPort>, PortError> {
    let mut out = Vec::new();
    for c in spec.containers.iter().chain(&spec.init_containers) {
        for p in &c.ports {
            let Some(host_port) = p.host_port else {
                continue;
            };
            let host_ip = match &p.host_ip {
                None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                Some(ip) => ip.parse().map_err(|_| PortError::Ip {
                    spec: format!("{host_port}:{}", p.container_port),
                    ip: ip.clone(),
                })?,
            };
            out.push(PublishedPort {
                host_ip,
                host_port,
                container_port: p.container_port,
                protocol: p.protocol,
            });
        }
    }
    check_unique(&out)?;
    Ok(out)
}

/// Refuses two publications that would bind the same host port (one on `0.0.0.0` clashes
/// with any address).
pub fn check_unique(ports: &[PublishedPort]) -> Result<(), PortError> {
    let mut seen = BTreeSet::new();
    for p in ports {
        for q in &seen {
            let q: &PublishedPort = q;
            let overlapping_ip =
                p.host_ip == q.host_ip || p.host_ip.is_unspecified() || q.host_ip.is_unspecified();
            if p.host_port == q.host_port && p.protocol == q.protocol && overlapping_ip {
                return Err(PortError::Duplicate(*p));
            }
        }
        seen.insert(*p);
    }
    Ok(())
}

enum Socket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// Host ports bound for a pod, not yet forwarding: binding first means a taken port fails
/// the pod before anything else of it exists.
pub struct BoundPorts {
    sockets: Vec<(PublishedPort, Socket)>,
}

impl std::fmt::Debug for BoundPorts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.sockets.iter().map(|(p, _)| p))
            .finish()
    }
}

impl BoundPorts {
    /// Binds every port or none (the ones bound so far close when this fails).
    pub fn bind(ports: &[PublishedPort]) -> Result<Self, PortError> {
        check_unique(ports)?;
        let mut sockets = Vec::new();
        for port in ports {
            let bound = match port.protocol {
                PortProtocol::Tcp => TcpListener::bind(port.host_addr()).map(Socket::Tcp),
                PortProtocol::Udp => UdpSocket::bind(port.host_addr()).map(Socket::Udp),
            };
            let socket = bound.map_err(|source| match source.kind() {
                ErrorKind::AddrInUse => PortError::InUse {
                    port: *port,
                    source,
                },
                _ => PortError::Bind {
                    port: *port,
                    source,
                },
            })?;
            sockets.push((*port, socket));
        }
        Ok(BoundPorts { sockets })
    }

    /// Forwards each port to `target` (the pod's address) on threads that live as long as
    /// the process (the supervisor ends with its pod).
    pub fn forward(self, target: IpAddr) {
        for (port, socket) in self.sockets {
            let to = SocketAddr::new(target, port.container_port);
            match socket {
                Socket::Tcp(listener) => {
                    std::thread::spawn(move || serve_tcp(listener, to));
                }
                Socket::Udp(socket) => {
                    std::thread::spawn(move || serve_udp(socket, to));
                }
            }
        }
    }
}

fn serve_tcp(listener: TcpListener, to: SocketAddr) {
    for client in listener.incoming() {
        let client = match client {
            Ok(c) => c,
            // A client that gave up before accept, or a descriptor shortage: go on.
            Err(e) => {
                tracing::debug!("accept on {to}: {e}");
                continue;
            }
        };
        std::thread::spawn(move || {
            let upstream = match TcpStream::connect_timeout(&to, CONNECT_TIMEOUT) {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!("cannot reach the pod at {to}: {e}");
                    return;
                }
            };
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            if let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) {
                let back = std::thread::spawn(move || pipe(u2, c2));
                pipe(client, upstream);
                let _ = back.join();
            }
        });
    }
}

/// Copies `from` to `to` until end of file, then half-closes `to` so the other side sees it.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

fn serve_udp(socket: UdpSocket, to: SocketAddr) {
    let socket = Arc::new(socket);
    let clients: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
    let mut buf = vec![0u8; UDP_MAX];
    loop {
        let (n, client) = match socket.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::debug!("udp receive for {to}: {e}");
                continue;
            }
        };
        let upstream = {
            let mut map = clients.lock().unwrap_or_else(|e| e.into_inner());
            match map.get(&client) {
                Some(u) => Some(u.clone()),
                None => match udp_upstream(to) {
                    Ok(u) => {
                        let u = Arc::new(u);
                        map.insert(client, u.clone());
                        let (host, u2, map2) = (socket.clone(), u.clone(), clients.clone());
                        std::thread::spawn(move || udp_replies(host, u2, client, map2));
                        Some(u)
                    }
                    Err(e) => {
                        tracing::debug!("udp socket to {to}: {e}");
                        None
                    }
                },
            }
        };
        if let Some(u) = upstream {
            let _ = u.send(&buf[..n]);
        }
    }
}

fn udp_upstream(to: SocketAddr) -> std::io::Result<UdpSocket> {
    let local: SocketAddr = match to {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let u = UdpSocket::bind(local)?;
    u.connect(to)?;
    u.set_read_timeout(Some(UDP_IDLE))?;
    Ok(u)
}

/// Sends the pod's replies on `upstream` back to `client` until it has been idle for
/// [`UDP_IDLE`], then forgets the client.
fn udp_replies(
    host: Arc<UdpSocket>,
    upstream: Arc<UdpSocket>,
    client: SocketAddr,
    clients: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>>,
) {
    let mut buf = vec![0u8; UDP_MAX];
    loop {
        match upstream.recv(&mut buf) {
            Ok(n) => {
                let _ = host.send_to(&buf[..n], client);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // Idle (timeout), or the pod refused (ICMP unreachable): forget this client.
            Err(_) => break,
        }
    }
    clients
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&client);
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::Ipv6Addr;

    use super::*;

    fn port(ip: IpAddr, host: u16, container: u16, protocol: PortProtocol) -> PublishedPort {
        PublishedPort {
            host_ip: ip,
            host_port: host,
            container_port: container,
            protocol,
        }
    }

    const ANY: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn publish_specs_parse() {
        let good: &[(&str, PublishedPort)] = &[
            ("8080:80", port(ANY, 8080, 80, PortProtocol::Tcp)),
            ("127.0.0.1:8080:80", port(LO, 8080, 80, PortProtocol::Tcp)),
            ("127.0.0.1:53:53/udp", port(LO, 53, 53, PortProtocol::Udp)),
            ("8080:80/TCP", port(ANY, 8080, 80, PortProtocol::Tcp)),
            (":8080:80", port(ANY, 8080, 80, PortProtocol::Tcp)),
            (
                "[::1]:8080:80",
                port(IpAddr::V6(Ipv6Addr::LOCALHOST), 8080, 80, PortProtocol::Tcp),
            ),
            ("65535:1", port(ANY, 65535, 1, PortProtocol::Tcp)),
        ];
        for (text, want) in good {
            assert_eq!(parse_publish(text).unwrap(), *want, "{text}");
        }
    }

    #[test]
    fn bad_publish_specs_say_why() {
        let bad: &[(&str, &str)] = &[
            ("80", "expected [IP:]HOSTPORT:CONTAINERPORT"),
            ("", "expected"),
            (":80", "expected"),
            ("0:80", "host port \"0\" is not a port"),
            ("65536:80", "host port \"65536\" is not a port"),
            ("8080:0", "container port \"0\" is not a port"),
            ("8080:http", "container port \"http\""),
            ("-1:80", "host port \"-1\""),
            ("8080:80/sctp", "protocol \"sctp\" is not supported"),
            ("localhost:8080:80", "\"localhost\" is not an IP address"),
            ("1.2.3:8080:80", "is not an IP address"),
        ];
        for (text, want) in bad {
            let err = parse_publish(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn display_is_dockers_form() {
        assert_eq!(
            port(LO, 8080, 80, PortProtocol::Udp).to_string(),
            "127.0.0.1:8080->80/udp"
        );
    }

    #[test]
    fn the_same_host_port_twice_is_refused() {
        let clash = [
            (
                port(ANY, 80, 80, PortProtocol::Tcp),
                port(LO, 80, 81, PortProtocol::Tcp),
            ),
            (
                port(LO, 80, 80, PortProtocol::Tcp),
                port(LO, 80, 81, PortProtocol::Tcp),
            ),
        ];
        for (a, b) in clash {
            assert!(matches!(
                check_unique(&[a, b]),
                Err(PortError::Duplicate(_))
            ));
        }
        let fine = [
            (
                port(LO, 80, 80, PortProtocol::Tcp),
                port(LO, 80, 80, PortProtocol::Udp),
            ),
            (
                port(LO, 80, 80, PortProtocol::Tcp),
                port(
                    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
                    80,
                    80,
                    PortProtocol::Tcp,
                ),
            ),
        ];
        for (a, b) in fine {
            check_unique(&[a, b]).unwrap();
        }
    }

    /// A free port on 127.0.0.1 (bound and released; good enough for a test).
    fn free_port() -> u16 {
        TcpListener::bind((LO, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn a_port_in_use_fails_and_releases_the_others() {
        let taken = TcpListener::bind((LO, 0)).unwrap();
        let taken_port = taken.local_addr().unwrap().port();
        let first = free_port();
        let err = BoundPorts::bind(&[
            port(LO, first, 80, PortProtocol::Tcp),
            port(LO, taken_port, 80, PortProtocol::Tcp),
        ])
        .unwrap_err();
        assert!(matches!(err, PortError::InUse { .. }), "{err}");
        assert!(
            err.to_string().contains("choose another host port"),
            "{err}"
        );
        // The first port was released.
        TcpListener::bind((LO, first)).unwrap();
    }

    #[test]
    fn tcp_is_forwarded_both_ways() {
        let server = TcpListener::bind((LO, 0)).unwrap();
        let target = server.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut conn, _) = server.accept().unwrap();
            let mut req = [0u8; 4];
            conn.read_exact(&mut req).unwrap();
            conn.write_all(b"pong:").unwrap();
            conn.write_all(&req).unwrap();
        });
        let host_port = free_port();
        let bound = BoundPorts::bind(&[PublishedPort {
            host_ip: LO,
            host_port,
            container_port: target.port(),
            protocol: PortProtocol::Tcp,
        }])
        .unwrap();
        bound.forward(target.ip());
        let mut client = TcpStream::connect((LO, host_port)).unwrap();
        client.write_all(b"ping").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "pong:ping");
    }

    #[test]
    fn udp_replies_reach_their_own_client() {
        let server = UdpSocket::bind((LO, 0)).unwrap();
        let target = server.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            loop {
                let (n, from) = server.recv_from(&mut buf).unwrap();
                let mut reply = b"re:".to_vec();
                reply.extend_from_slice(&buf[..n]);
                server.send_to(&reply, from).unwrap();
            }
        });
        let host_port = UdpSocket::bind((LO, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        BoundPorts::bind(&[PublishedPort {
            host_ip: LO,
            host_port,
            container_port: target.port(),
            protocol: PortProtocol::Udp,
        }])
        .unwrap()
        .forward(target.ip());
        let a = UdpSocket::bind((LO, 0)).unwrap();
        let b = UdpSocket::bind((LO, 0)).unwrap();
        for s in [&a, &b] {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.connect((LO, host_port)).unwrap();
        }
        a.send(b"a").unwrap();
        b.send(b"b").unwrap();
        let mut buf = [0u8; 16];
        let n = a.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"re:a");
        let n = b.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"re:b");
    }
}
