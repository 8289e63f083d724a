//! Incident-response blocks: a consumer, one of its keys, or an address
//! range refused everywhere with 403 `blocked`, whatever the API's own
//! policies say, until the block expires or is lifted.
//!
//! Compiled into the snapshot like everything else, so a block takes effect
//! with the snapshot swap that follows its write. Expiry is checked per
//! request against the clock, so an expired block stops applying on time
//! without a new snapshot.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use tollgate_config::Block;

use crate::denial::Denial;

/// One block's expiry (Unix seconds; `None`: until lifted).
#[derive(Clone, Copy, Debug)]
struct Until(Option<i64>);

impl Until {
    fn active(self, now_unix: i64) -> bool {
        self.0.is_none_or(|at| now_unix < at)
    }
}

/// Every block of a snapshot, indexed by what it blocks.
#[derive(Debug, Default)]
pub struct Blocks {
    ips: Vec<(IpNet, Until)>,
    consumers: HashMap<String, Until>,
    keys: HashMap<String, Until>,
}

impl Blocks {
    pub fn compile(blocks: &[Block]) -> Blocks {
        let mut compiled = Blocks::default();
        for block in blocks {
            let until = Until(block.expires.map(|t| t.unix_timestamp()));
            if let Some(ip) = block.ip {
                compiled.ips.push((ip.trunc(), until));
            }
            if let Some(consumer) = &block.consumer {
                merge(&mut compiled.consumers, consumer, until);
            }
            if let Some(key_id) = &block.key_id {
                merge(&mut compiled.keys, key_id, until);
            }
        }
        compiled
    }

    /// The block of the key `id`, for the key index.
    pub fn key_block(&self, id: &str) -> Option<crate::credentials::KeyBlock> {
        self.keys
            .get(id)
            .map(|until| crate::credentials::KeyBlock { until: until.0 })
    }

    /// Whether any address range is blocked: the proxy skips the check otherwise.
    pub fn has_ips(&self) -> bool {
        !self.ips.is_empty()
    }

    pub fn is_empty(&self) -> bool {
        self.ips.is_empty() && self.consumers.is_empty() && self.keys.is_empty()
    }

    /// Whether requests from `ip` are blocked.
    pub fn check_ip(&self, ip: IpAddr, now_unix: i64) -> Result<(), Denial> {
        let ip = canonical(ip);
        if self
            .ips
            .iter()
            .any(|(net, until)| net.contains(&ip) && until.active(now_unix))
        {
            return Err(Denial::blocked("requests from this address are blocked"));
        }
        Ok(())
    }

    /// Whether the consumer is blocked (its keys' blocks are in the key index).
    pub fn check_consumer(&self, consumer: &str, now_unix: i64) -> Result<(), Denial> {
        if self
            .consumers
            .get(consumer)
            .is_some_and(|until| until.active(now_unix))
        {
            return Err(Denial::blocked("this consumer is blocked"));
        }
        Ok(())
    }
}

/// Two blocks of the same target: the longer one wins.
fn merge(map: &mut HashMap<String, Until>, name: &str, until: Until) {
    let entry = map.entry(name.to_string()).or_insert(until);
    entry.0 = match (entry.0, until.0) {
        (Some(a), Some(b)) => Some(a.max(b)),
        _ => None,
    };
}

/// The clock blocks are checked against, in Unix seconds.
pub fn now_unix() -> i64 {
    crate::counters::unix_seconds(std::time::SystemTime::now())
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) as the IPv4 address they
/// are, so an IPv4 range blocks them on a dual-stack listener.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(yaml: &str) -> Block {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn blocks_apply_until_they_expire() {
        let blocks = Blocks::compile(&[
            block("{ id: a, ip: 10.0.0.0/8 }"),
            block("{ id: b, consumer: mallory, expires: '2030-01-01T00:00:00Z' }"),
            block("{ id: c, key_id: key_1 }"),
        ]);
        let now = 1_800_000_000; // 2027
        let after = 1_900_000_000; // 2030
        assert!(blocks.check_ip("10.1.2.3".parse().unwrap(), now).is_err());
        assert!(blocks
            .check_ip("::ffff:10.1.2.3".parse().unwrap(), now)
            .is_err());
        assert!(blocks.check_ip("11.0.0.1".parse().unwrap(), now).is_ok());
        let denial = blocks.check_consumer("mallory", now).unwrap_err();
        assert_eq!((denial.code, denial.status.as_u16()), ("blocked", 403));
        assert!(blocks.check_consumer("mallory", after).is_ok());
        assert!(blocks.check_consumer("alice", now).is_ok());
        assert!(blocks.key_block("key_1").is_some_and(|b| b.until.is_none()));
        assert!(blocks.key_block("key_2").is_none());
    }
}
