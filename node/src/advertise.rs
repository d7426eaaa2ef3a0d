//! What this node tells others its addresses are: a listener bound to `0.0.0.0:25`
//! is reached at `10.0.0.7:25` (or `porcupine-2.peers:25`), never at `0.0.0.0`,
//! which every other host would take as itself.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};

/// Why this node's addresses cannot be announced.
#[derive(Debug, thiserror::Error)]
pub enum AdvertiseError {
    /// Bound to an unspecified address, no `advertise`, and no route to a seed.
    #[error(
        "{listener} listens on {bound}, an address other nodes cannot dial, and no seed ({seeds}) gave a route to learn this host's address from: set `advertise` (or --advertise) to this host's address or DNS name"
    )]
    Unroutable {
        /// Which listener.
        listener: &'static str,
        /// Where it is bound.
        bound: SocketAddr,
        /// The seeds tried.
        seeds: String,
    },
    /// The OS host name could not be read.
    #[error("reading the host name: {0}")]
    Hostname(String),
    /// `node_id_from_hostname` and the host name has no trailing digits.
    #[error(
        "node_id_from_hostname: host name {0:?} does not end in digits (StatefulSet pods are named like porcupine-2)"
    )]
    NoOrdinal(String),
}

/// The OS host name.
pub fn hostname() -> Result<String, AdvertiseError> {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::env::var("HOSTNAME"))
        .map_err(|e| AdvertiseError::Hostname(e.to_string()))?;
    let name = raw.trim();
    if name.is_empty() {
        return Err(AdvertiseError::Hostname("empty host name".into()));
    }
    Ok(name.to_string())
}

/// The node id in a host name's trailing digits (`porcupine-2` → 2).
pub fn ordinal(host: &str) -> Result<u64, AdvertiseError> {
    let short = host.split('.').next().unwrap_or(host);
    let digits = short.len() - short.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    short[short.len() - digits..]
        .parse()
        .map_err(|_| AdvertiseError::NoOrdinal(host.to_string()))
}

/// `node_id` from the OS host name's ordinal.
pub fn node_id_from_hostname() -> Result<u64, AdvertiseError> {
    ordinal(&hostname()?)
}

/// `host:port`, bracketing an IPv6 literal.
fn join(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The address to announce for `listener` bound at `bound`: as bound when it is a
/// specific address; else `advertise` (with `{hostname}` filled in), else the source
/// address of the route to the first seed that resolves. `None` seeds and no
/// `advertise` on an unspecified address: a lone node, announced as bound.
pub fn advertised(
    listener: &'static str,
    bound: SocketAddr,
    advertise: Option<&str>,
    seeds: &[String],
) -> Result<String, AdvertiseError> {
    if !bound.ip().is_unspecified() {
        return Ok(bound.to_string());
    }
    if let Some(host) = advertise {
        let host = if host.contains("{hostname}") {
            host.replace("{hostname}", &hostname()?)
        } else {
            host.to_string()
        };
        return Ok(join(&host, bound.port()));
    }
    if seeds.is_empty() {
        return Ok(bound.to_string());
    }
    match seeds.iter().find_map(|s| route_source(s, bound.ip())) {
        Some(ip) => Ok(SocketAddr::new(ip, bound.port()).to_string()),
        None => Err(AdvertiseError::Unroutable {
            listener,
            bound,
            seeds: seeds.join(", "),
        }),
    }
}

/// The local address the kernel would send from to reach `seed` (no packet is sent:
/// connecting a UDP socket only chooses the route). Loopback does not count.
fn route_source(seed: &str, family: IpAddr) -> Option<IpAddr> {
    let target = seed
        .to_socket_addrs()
        .ok()?
        .find(|a| a.is_ipv4() == family.is_ipv4())?;
    let any: SocketAddr = SocketAddr::new(family, 0);
    let socket = UdpSocket::bind(any).ok()?;
    socket.connect(target).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_specific_address_is_announced_as_bound() {
        let a = advertised("rpc", addr("10.1.2.3:2503"), Some("other"), &[]).unwrap();
        assert_eq!(a, "10.1.2.3:2503");
    }

    #[test]
    fn advertise_fills_in_an_unspecified_host() {
        let a = advertised("rpc", addr("0.0.0.0:2503"), Some("10.9.9.9"), &[]).unwrap();
        assert_eq!(a, "10.9.9.9:2503");
        let a = advertised("rpc", addr("[::]:25"), Some("fd00::7"), &[]).unwrap();
        assert_eq!(a, "[fd00::7]:25");
        let a = advertised("rpc", addr("0.0.0.0:25"), Some("{hostname}.peers"), &[]).unwrap();
        assert_eq!(a, format!("{}.peers:25", hostname().unwrap()));
    }

    #[test]
    fn a_seed_on_loopback_gives_no_route_to_announce() {
        // The route to 127.0.0.1 leaves from 127.0.0.1, which no other host can dial.
        let e = advertised(
            "rpc",
            addr("0.0.0.0:2503"),
            None,
            &["127.0.0.1:9".to_string()],
        )
        .unwrap_err();
        assert!(e.to_string().contains("set `advertise`"), "{e}");
    }

    #[test]
    fn a_lone_node_is_announced_as_bound() {
        let a = advertised("rpc", addr("0.0.0.0:2503"), None, &[]).unwrap();
        assert_eq!(a, "0.0.0.0:2503");
    }

    #[test]
    fn ordinals_come_from_trailing_digits() {
        assert_eq!(ordinal("porcupine-2").unwrap(), 2);
        assert_eq!(ordinal("porcupine-17.peers.default.svc").unwrap(), 17);
        assert!(ordinal("porcupine").is_err());
        assert!(ordinal("web-2a").is_err());
    }
}
