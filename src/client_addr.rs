//! The client's address of a request, computed once per request by the
//! server and read by everything that needs it (the proxy's
//! `X-Forwarded-For`, login, rate limits), so no two places can disagree.
//!
//! The address is the TCP peer's, unless the peer is one of
//! `server.trusted_proxies`: then it is the right-most address in that
//! proxy's `X-Forwarded-For` that is not itself a trusted proxy. Everything
//! left of it was written by the client and proves nothing.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;

/// Who sent a request, as the rest of the service sees it; put into every
/// request's extensions by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr {
    /// The client's IP address.
    pub ip: IpAddr,
    /// Whether the client reached the service over TLS (`https`), either
    /// on our own listener or, as a trusted proxy says, on the proxy's.
    pub https: bool,
}

impl ClientAddr {
    /// `https` or `http`, for `X-Forwarded-Proto`.
    #[must_use]
    pub fn proto(&self) -> &'static str {
        if self.https { "https" } else { "http" }
    }
}

/// An address block: an IP and a prefix length (a lone IP is a full-length block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `10.0.0.0/8`, `fd00::/8`, `127.0.0.1` or `::1`.
    ///
    /// # Errors
    /// A line saying what is wrong with `s`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let addr: IpAddr = ip.trim().parse().map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(len) => match len.trim().parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{s:?}: the prefix length must be 0 to {max}")),
            },
        };
        Ok(IpNet { addr: canonical(addr), prefix })
    }

    /// Whether `ip` lies in this block.
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4 address seen on an IPv6 socket (`::ffff:a.b.c.d`) is that IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// `server.trusted_proxies`: the peers whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// The blocks of `server.trusted_proxies` (checked by config validation).
    ///
    /// # Errors
    /// The first entry that is not an IP address or CIDR block.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        entries.iter().map(|e| IpNet::parse(e)).collect::<Result<_, _>>().map(TrustedProxies)
    }

    /// Whether `ip` is one of the trusted proxies.
    #[must_use]
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(ip))
    }

    /// The client behind a connection from `peer` that carried `headers`;
    /// `tls`: whether that connection is TLS.
    #[must_use]
    pub fn client_of(&self, peer: SocketAddr, headers: &HeaderMap, tls: bool) -> ClientAddr {
        let peer_ip = canonical(peer.ip());
        if !self.trusts(peer_ip) {
            return ClientAddr { ip: peer_ip, https: tls };
        }
        // A trusted proxy terminated the client's connection: believe what it
        // says of the scheme, and walk its X-Forwarded-For from the right.
        let https = match last_value(headers, "x-forwarded-proto").as_deref() {
            Some(p) if p.eq_ignore_ascii_case("https") => true,
            Some(p) if p.eq_ignore_ascii_case("http") => false,
            _ => tls,
        };
        let mut client = peer_ip;
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        for hop in hops.iter().rev() {
            // Garbage can only come from left of the proxy's own entry, that
            // is from the client: the last good address stands.
            let Some(ip) = parse_hop(hop) else { break };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        ClientAddr { ip: client, https }
    }
}

/// The last comma-separated value of a header (the one the nearest proxy wrote).
fn last_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let last = headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).next_back()?;
    last.rsplit(',').next().map(|v| v.trim().to_string())
}

/// One `X-Forwarded-For` entry: an IP, an `ip:port` or `[ipv6]:port`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    hop.parse::<SocketAddr>().ok().map(|s| canonical(s.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 40000)
    }

    #[test]
    fn blocks() {
        let net = IpNet::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(IpNet::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(IpNet::parse("127.0.0.1").unwrap().contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(IpNet::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
        assert!(!IpNet::parse("0.0.0.0/0").unwrap().contains("::2".parse().unwrap()));
        assert!(IpNet::parse("fd00::/8").unwrap().contains("fd12::1".parse().unwrap()));
        assert!(IpNet::parse("10.0.0.0/33").is_err());
        assert!(IpNet::parse("localhost").is_err());
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let t = TrustedProxies::parse(&["10.0.0.1".into()]).unwrap();
        let h = headers(&[("x-forwarded-for", "1.2.3.4"), ("x-forwarded-proto", "https")]);
        assert_eq!(
            t.client_of(peer("203.0.113.9"), &h, false),
            ClientAddr { ip: "203.0.113.9".parse().unwrap(), https: false }
        );
    }

    #[test]
    fn a_trusted_proxy_names_the_client_right_most_untrusted_first() {
        let t = TrustedProxies::parse(&["10.0.0.0/8".into()]).unwrap();
        // The client forged 6.6.6.6; the first proxy saw 198.51.100.7; a second trusted hop 10.0.0.5.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7"), ("x-forwarded-for", "10.0.0.5")]);
        let c = t.client_of(peer("10.0.0.1"), &h, false);
        assert_eq!(c.ip, "198.51.100.7".parse::<IpAddr>().unwrap());
        // No header: the proxy itself.
        assert_eq!(t.client_of(peer("10.0.0.1"), &HeaderMap::new(), false).ip, "10.0.0.1".parse::<IpAddr>().unwrap());
        // Garbage left of a good hop does not win.
        let h = headers(&[("x-forwarded-for", "unknown, 10.0.0.9")]);
        assert_eq!(t.client_of(peer("10.0.0.1"), &h, false).ip, "10.0.0.9".parse::<IpAddr>().unwrap());
        let h = headers(&[("x-forwarded-for", "[2001:db8::1]:443"), ("x-forwarded-proto", "https")]);
        assert_eq!(
            t.client_of(peer("10.0.0.1"), &h, false),
            ClientAddr { ip: "2001:db8::1".parse().unwrap(), https: true }
        );
    }
}
