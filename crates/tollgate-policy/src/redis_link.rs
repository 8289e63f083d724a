//! The connection [`crate::counters_redis::RedisCounters`] talks through:
//! one Redis server, or a Redis Cluster.
//!
//! `storage.redis` names a cluster by listing several of its nodes,
//! comma-separated (`redis://10.0.0.1:7000,redis://10.0.0.2:7000`), or one
//! with the `redis+cluster://` (`rediss+cluster://`) scheme; the client
//! discovers the others and routes each command to the node that owns its
//! key's slot, following `MOVED` and `ASK` as slots move.
//!
//! Both connect lazily and never make a request wait through a long
//! back-off: a single server through a [`ConnectionManager`] (re-established
//! in the background), a cluster through a connection made on first use,
//! bounded by the connect timeout, and made again on the next command after
//! a failure to connect.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{Client, Cmd, Pipeline, RedisFuture, Value};
use tokio::sync::OnceCell;

use crate::counters::CounterError;

/// How a [`Link`] connects.
#[derive(Clone, Copy, Debug)]
pub struct LinkOptions {
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
}

/// One Redis server, or a cluster.
#[derive(Clone)]
pub enum Link {
    Single(ConnectionManager),
    Cluster(std::sync::Arc<ClusterLink>),
}

/// A cluster's client and its connection, once made.
pub struct ClusterLink {
    client: ClusterClient,
    connection: OnceCell<ClusterConnection>,
    connect_timeout: Duration,
}

/// The seed URLs when `url` names a cluster (several URLs, or the
/// `+cluster` scheme); `None` for a single server.
pub fn cluster_seeds(url: &str) -> Option<Vec<String>> {
    let seeds: Vec<String> = url
        .split(',')
        .map(str::trim)
        .filter(|seed| !seed.is_empty())
        .map(|seed| {
            seed.replacen("redis+cluster://", "redis://", 1).replacen(
                "rediss+cluster://",
                "rediss://",
                1,
            )
        })
        .collect();
    let marked = url.starts_with("redis+cluster://") || url.starts_with("rediss+cluster://");
    (marked || seeds.len() > 1).then_some(seeds)
}

impl Link {
    /// A link for `url`; fails only on a URL it cannot use. Must be called
    /// within a Tokio runtime.
    pub fn new(url: &str, options: LinkOptions) -> Result<Link, CounterError> {
        if let Some(seeds) = cluster_seeds(url) {
            let client = ClusterClientBuilder::new(seeds)
                .connection_timeout(options.connect_timeout)
                .response_timeout(options.response_timeout)
                .retries(1)
                .build()
                .map_err(CounterError::new)?;
            return Ok(Link::Cluster(std::sync::Arc::new(ClusterLink {
                client,
                connection: OnceCell::new(),
                connect_timeout: options.connect_timeout,
            })));
        }
        let client = Client::open(url).map_err(CounterError::new)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.response_timeout))
            // One retry after a short pause, then the command fails: the
            // next one starts a new attempt. A request never waits through
            // a long back-off.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(100));
        let connection =
            ConnectionManager::new_lazy_with_config(client, config).map_err(CounterError::new)?;
        Ok(Link::Single(connection))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Link::Cluster(_))
    }

    /// A handle to send commands through (cheap: both are multiplexed).
    pub async fn connection(&self) -> Result<Connection, CounterError> {
        match self {
            Link::Single(manager) => Ok(Connection::Single(manager.clone())),
            Link::Cluster(cluster) => {
                let connection = cluster
                    .connection
                    .get_or_try_init(|| async {
                        tokio::time::timeout(
                            // Discovery asks a seed, then connects to each
                            // primary: allow a few connections' time.
                            cluster.connect_timeout * 3,
                            cluster.client.get_async_connection(),
                        )
                        .await
                        .map_err(|_| CounterError::new("Redis Cluster: connect timed out"))?
                        .map_err(CounterError::new)
                    })
                    .await?;
                Ok(Connection::Cluster(connection.clone()))
            }
        }
    }
}

/// A connection to one server or to a cluster, for scripts and commands.
pub enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::cluster_seeds;

    #[test]
    fn a_cluster_is_several_urls_or_the_cluster_scheme() {
        assert_eq!(cluster_seeds("redis://127.0.0.1:6379"), None);
        assert_eq!(cluster_seeds("rediss://h:6380/0"), None);
        assert_eq!(
            cluster_seeds("redis://a:7000, redis://b:7001"),
            Some(vec![
                "redis://a:7000".to_string(),
                "redis://b:7001".to_string()
            ])
        );
        assert_eq!(
            cluster_seeds("redis+cluster://a:7000"),
            Some(vec!["redis://a:7000".to_string()])
        );
        assert_eq!(
            cluster_seeds("rediss+cluster://user:pw@a:7000"),
            Some(vec!["rediss://user:pw@a:7000".to_string()])
        );
    }
}
