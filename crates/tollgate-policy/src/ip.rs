//! Client IP rules: `deny` wins over `allow`; a non-empty `allow` admits only
//! its networks.
//!
//! An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a dual-stack socket
//! reports for an IPv4 client) is matched as the IPv4 address it carries, and
//! a rule written in that form (`::ffff:10.0.0.0/104`) is compiled to its IPv4
//! network, so either spelling of a rule matches either spelling of a client.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tollgate_config::policy::IpPolicy;

use crate::denial::Denial;

/// The networks of one list, split by family so a check scans only its own.
#[derive(Clone, Debug, Default)]
struct NetList {
    v4: Vec<Ipv4Net>,
    v6: Vec<Ipv6Net>,
}

impl NetList {
    fn compile(nets: &[IpNet]) -> NetList {
        let mut list = NetList::default();
        // `aggregate` drops networks covered by others and merges neighbours.
        for net in IpNet::aggregate(&nets.iter().map(canonical_net).collect()) {
            match net {
                IpNet::V4(net) => list.v4.push(net),
                IpNet::V6(net) => list.v6.push(net),
            }
        }
        list
    }

    fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(ip) => self.v4.iter().any(|net| net.contains(&ip)),
            IpAddr::V6(ip) => self.v6.iter().any(|net| net.contains(&ip)),
        }
    }
}

/// `::ffff:a.b.c.d/p` with `p >= 96` is the IPv4 network `a.b.c.d/(p - 96)`.
fn canonical_net(net: &IpNet) -> IpNet {
    if let IpNet::V6(v6) = net {
        if v6.prefix_len() >= 96 {
            if let Some(v4) = v6.network().to_ipv4_mapped() {
                if let Ok(v4) = Ipv4Net::new(v4, v6.prefix_len() - 96) {
                    return IpNet::V4(v4.trunc());
                }
            }
        }
    }
    net.trunc()
}

/// An [`IpPolicy`] compiled for the request path: no allocation per check.
#[derive(Clone, Debug, Default)]
pub struct IpRules {
    allow: NetList,
    deny: NetList,
}

impl IpRules {
    pub fn compile(p: &IpPolicy) -> IpRules {
        IpRules {
            allow: NetList::compile(&p.allow),
            deny: NetList::compile(&p.deny),
        }
    }

    /// `Err(ip_denied)` (403) when the client address is refused. The message
    /// names neither the rules nor the address.
    pub fn check(&self, ip: IpAddr) -> Result<(), Denial> {
        let ip = ip.to_canonical();
        let admitted =
            !self.deny.contains(ip) && (self.allow.is_empty() || self.allow.contains(ip));
        if admitted {
            Ok(())
        } else {
            Err(Denial::ip_denied(
                "requests from this client address are not allowed",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow: &[&str], deny: &[&str]) -> IpRules {
        let parse = |list: &[&str]| list.iter().map(|n| n.parse().unwrap()).collect();
        IpRules::compile(&IpPolicy {
            allow: parse(allow),
            deny: parse(deny),
        })
    }

    fn ok(rules: &IpRules, ip: &str) -> bool {
        rules.check(ip.parse().unwrap()).is_ok()
    }

    #[test]
    fn empty_rules_admit_everyone() {
        let r = rules(&[], &[]);
        assert!(ok(&r, "203.0.113.7"));
        assert!(ok(&r, "2001:db8::1"));
    }

    #[test]
    fn allow_admits_only_its_networks() {
        let r = rules(&["10.0.0.0/8", "192.168.1.5/32"], &[]);
        assert!(ok(&r, "10.1.2.3"));
        assert!(ok(&r, "192.168.1.5"));
        assert!(!ok(&r, "192.168.1.6"));
        assert!(!ok(&r, "2001:db8::1"), "an IPv4 allow list shuts out IPv6");
    }

    #[test]
    fn deny_refuses_its_networks_only() {
        let r = rules(&[], &["203.0.113.0/24"]);
        assert!(!ok(&r, "203.0.113.9"));
        assert!(ok(&r, "203.0.114.9"));
    }

    #[test]
    fn deny_wins_over_allow() {
        let r = rules(&["10.0.0.0/8"], &["10.9.0.0/16"]);
        assert!(ok(&r, "10.1.0.1"));
        assert!(!ok(&r, "10.9.0.1"));
        assert!(!ok(&r, "11.0.0.1"));
    }

    #[test]
    fn ipv6_networks() {
        let r = rules(&["2001:db8::/32"], &["2001:db8:bad::/48"]);
        assert!(ok(&r, "2001:db8:1::1"));
        assert!(!ok(&r, "2001:db8:bad::1"));
        assert!(!ok(&r, "2001:db9::1"));
        assert!(!ok(&r, "10.0.0.1"));
    }

    #[test]
    fn mapped_addresses_match_as_ipv4() {
        let r = rules(&["10.0.0.0/8"], &["10.9.0.0/16"]);
        assert!(ok(&r, "::ffff:10.1.2.3"));
        assert!(!ok(&r, "::ffff:10.9.2.3"));
        assert!(!ok(&r, "::ffff:11.1.2.3"));

        // A rule written in mapped form matches the plain IPv4 address too.
        let r = rules(&[], &["::ffff:192.0.2.0/120"]);
        assert!(!ok(&r, "192.0.2.44"));
        assert!(!ok(&r, "::ffff:192.0.2.44"));
        assert!(ok(&r, "192.0.3.44"));
    }

    #[test]
    fn denial_is_ip_denied_without_the_rules() {
        let r = rules(&["10.0.0.0/8"], &[]);
        let denial = r.check("192.0.2.1".parse().unwrap()).unwrap_err();
        assert_eq!(denial.code, "ip_denied");
        assert_eq!(denial.status, http::StatusCode::FORBIDDEN);
        assert!(!denial.message.contains("10.0.0.0"));
        assert!(!denial.message.contains("192.0.2.1"));
    }
}
