//! Address ranges, for deciding which peers may speak for a client
//! (`X-Forwarded-*` from a trusted proxy) — security invariant 7.

use std::net::IpAddr;

/// An address range in CIDR notation; a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet(ipnet::IpNet);

impl IpNet {
    /// Parses `10.0.0.0/8`, `::1` or `fd00::/8`.
    pub fn parse(text: &str) -> Option<IpNet> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (text.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        // `ipnet::IpNet::new` refuses a prefix longer than the address.
        ipnet::IpNet::new(addr, prefix.unwrap_or(max)).ok().map(IpNet)
    }

    /// Whether `ip` is in the range. IPv4-mapped IPv6 peers (`::ffff:a.b.c.d`,
    /// as a dual-stack socket reports them) match IPv4 ranges.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.contains(&ip)
    }
}

#[cfg(test)]
mod tests {
    use super::IpNet;

    #[test]
    fn ranges_match_what_they_cover_and_nothing_else() {
        let net = IpNet::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.255.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one = IpNet::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        assert!(IpNet::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
        assert!(IpNet::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(!IpNet::parse("::1").unwrap().contains("127.0.0.1".parse().unwrap()));
        // Host bits in the range's address are ignored, as before.
        assert!(IpNet::parse("10.1.2.3/16").unwrap().contains("10.1.200.1".parse().unwrap()));
        assert!(IpNet::parse("fd00::1/8").unwrap().contains("fdff::2".parse().unwrap()));
        assert!(!IpNet::parse("fd00::/8").unwrap().contains("fe00::1".parse().unwrap()));
        assert!(!IpNet::parse("::/0").unwrap().contains("10.0.0.1".parse().unwrap()));
        assert!(!IpNet::parse("::/0").unwrap().contains("::ffff:10.0.0.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "::/129", "example.com", "10.0.0/8", "", "1.2.3.4/"] {
            assert_eq!(IpNet::parse(bad), None, "{bad}");
        }
    }
}
