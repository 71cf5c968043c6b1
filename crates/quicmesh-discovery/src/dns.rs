//! DNS strategies: `dns_poll`, `kubernetes_dns` (A/AAAA records of a
//! headless service) and `kubernetes_dns_srv` (its SRV records), through
//! hickory-resolver, with the system's resolver or a given name server.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use quicmesh_wire::{NodeAddr, NodeName};

use super::{Candidate, CandidatesFuture, DiscoveryError, Strategy};

/// How long one DNS query may take before it counts as failed.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Builds a resolver: the system's (`/etc/resolv.conf`), or `nameserver`
/// alone. Answers are not cached, so every poll asks the server.
fn resolver(nameserver: Option<SocketAddr>) -> Result<TokioResolver, DiscoveryError> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = match nameserver {
        Some(addr) => {
            let mut server = NameServerConfig::udp_and_tcp(addr.ip());
            let at_port = |mut c: ConnectionConfig| {
                c.port = addr.port();
                c
            };
            server.connections = vec![
                at_port(ConnectionConfig::udp()),
                at_port(ConnectionConfig::tcp()),
            ];
            let config = ResolverConfig::from_parts(None, Vec::new(), vec![server]);
            TokioResolver::builder_with_config(config, provider)
        }
        None => TokioResolver::builder(provider).map_err(|e| DiscoveryError::Dns {
            query: "(system resolver)".to_owned(),
            detail: format!("cannot read the system's resolver configuration: {e}"),
        })?,
    };
    let options: &mut ResolverOpts = builder.options_mut();
    options.cache_size = 0;
    options.use_hosts_file = ResolveHosts::Never;
    options.timeout = QUERY_TIMEOUT;
    options.attempts = 1;
    builder.build().map_err(|e| DiscoveryError::Dns {
        query: "(resolver)".to_owned(),
        detail: e.to_string(),
    })
}

/// `basename@ip` (IPv6 in brackets), as a node name.
fn node_at(basename: &str, ip: IpAddr, port: u16) -> Result<NodeAddr, DiscoveryError> {
    let host = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    let name = NodeName::new(format!("{basename}@{host}"))
        .map_err(|e| DiscoveryError::Other(format!("bad node name for {ip}: {e}")))?;
    Ok(NodeAddr { name, port })
}

/// What both DNS strategies hold: a resolver, the name they ask for, the
/// part of node names before `@`, and their polling interval.
struct Query {
    resolver: TokioResolver,
    query: String,
    basename: String,
    interval: Duration,
}

impl std::fmt::Debug for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Query")
            .field("query", &self.query)
            .field("basename", &self.basename)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl Query {
    fn new(
        query: &str,
        basename: &str,
        interval: Duration,
        nameserver: Option<SocketAddr>,
    ) -> Result<Self, DiscoveryError> {
        Ok(Self {
            resolver: resolver(nameserver)?,
            query: query.to_owned(),
            basename: basename.to_owned(),
            interval,
        })
    }

    fn failed(query: &str, detail: &dyn std::fmt::Display) -> DiscoveryError {
        DiscoveryError::Dns {
            query: query.to_owned(),
            detail: detail.to_string(),
        }
    }

    /// The addresses of `host`; none when it has no records (an answer,
    /// not a failure: nobody is there yet).
    async fn ips(&self, host: &str) -> Result<Vec<IpAddr>, DiscoveryError> {
        match self.resolver.lookup_ip(host).await {
            Ok(ips) => Ok(ips.iter().collect()),
            Err(e) if e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(Self::failed(host, &e)),
        }
    }
}

/// A and AAAA records of a name, each address a node
/// `<basename>@<ip>:<port>` (libcluster's `DNSPoll`; `kubernetes_dns` is
/// the same query on a headless service's name).
#[derive(Debug)]
pub struct DnsPoll {
    query: Query,
    port: u16,
}

impl DnsPoll {
    /// Polls `query` every `interval` through `nameserver` (default: the
    /// system's resolver).
    pub fn new(
        query: &str,
        basename: &str,
        port: u16,
        interval: Duration,
        nameserver: Option<SocketAddr>,
    ) -> Result<Self, DiscoveryError> {
        Ok(Self {
            query: Query::new(query, basename, interval, nameserver)?,
            port,
        })
    }
}

impl Strategy for DnsPoll {
    fn candidates(&self) -> CandidatesFuture<'_> {
        Box::pin(async move {
            let q = &self.query;
            q.ips(&q.query)
                .await?
                .into_iter()
                .map(|ip| {
                    let node = node_at(&q.basename, ip, self.port)?;
                    Ok(Candidate::at(node, vec![SocketAddr::new(ip, self.port)]))
                })
                .collect()
        })
    }

    fn polling_interval(&self) -> Duration {
        self.query.interval
    }
}

/// SRV records of a name (a StatefulSet's headless service): each target
/// is a node `<application_name>@<target host>` at the record's port,
/// dialled at the target's addresses looked up through the same resolver.
#[derive(Debug)]
pub struct DnsSrv {
    query: Query,
}

impl DnsSrv {
    /// Polls the SRV records of `query` every `interval`.
    pub fn new(
        query: &str,
        basename: &str,
        interval: Duration,
        nameserver: Option<SocketAddr>,
    ) -> Result<Self, DiscoveryError> {
        Ok(Self {
            query: Query::new(query, basename, interval, nameserver)?,
        })
    }
}

impl Strategy for DnsSrv {
    fn candidates(&self) -> CandidatesFuture<'_> {
        Box::pin(async move {
            let q = &self.query;
            let records = match q.resolver.srv_lookup(q.query.as_str()).await {
                Ok(records) => records,
                Err(e) if e.is_no_records_found() => return Ok(Vec::new()),
                Err(e) => return Err(Query::failed(&q.query, &e)),
            };
            let mut found = Vec::new();
            for record in records.answers() {
                let RData::SRV(srv) = &record.data else {
                    continue;
                };
                let target = srv.target.to_ascii();
                let host = target.trim_end_matches('.');
                let name = NodeName::new(format!("{}@{host}", q.basename))
                    .map_err(|e| Query::failed(&q.query, &format!("SRV target {host}: {e}")))?;
                // A target without an address yet (a pod starting) is skipped.
                let ips = q.ips(host).await?;
                if ips.is_empty() {
                    continue;
                }
                let addrs = ips
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, srv.port))
                    .collect();
                found.push(Candidate::at(
                    NodeAddr {
                        name,
                        port: srv.port,
                    },
                    addrs,
                ));
            }
            Ok(found)
        })
    }

    fn polling_interval(&self) -> Duration {
        self.query.interval
    }
}
