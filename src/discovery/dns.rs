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

/// A and AAAA records of a name, each address a node
/// `<basename>@<ip>:<port>` (libcluster's `DNSPoll`; `kubernetes_dns` is
/// the same query on a headless service's name).
pub struct DnsPoll {
    resolver: TokioResolver,
    query: String,
    basename: String,
    port: u16,
    interval: Duration,
}

impl std::fmt::Debug for DnsPoll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsPoll")
            .field("query", &self.query)
            .field("basename", &self.basename)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
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
            resolver: resolver(nameserver)?,
            query: query.to_owned(),
            basename: basename.to_owned(),
            port,
            interval,
        })
    }
}

impl Strategy for DnsPoll {
    fn candidates(&self) -> CandidatesFuture<'_> {
        Box::pin(async move {
            let ips = match self.resolver.lookup_ip(self.query.as_str()).await {
                Ok(ips) => ips,
                // A name without records is an answer: nobody is there.
                Err(e) if e.is_no_records_found() => return Ok(Vec::new()),
                Err(e) => {
                    return Err(DiscoveryError::Dns {
                        query: self.query.clone(),
                        detail: e.to_string(),
                    });
                }
            };
            ips.iter()
                .map(|ip| {
                    let node = node_at(&self.basename, ip, self.port)?;
                    Ok(Candidate::at(node, vec![SocketAddr::new(ip, self.port)]))
                })
                .collect()
        })
    }

    fn polling_interval(&self) -> Duration {
        self.interval
    }
}

/// SRV records of a name (a StatefulSet's headless service): each target
/// is a node `<application_name>@<target host>` at the record's port,
/// dialled at the target's addresses looked up through the same resolver.
pub struct DnsSrv {
    resolver: TokioResolver,
    query: String,
    basename: String,
    interval: Duration,
}

impl std::fmt::Debug for DnsSrv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsSrv")
            .field("query", &self.query)
            .field("basename", &self.basename)
            .finish_non_exhaustive()
    }
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
            resolver: resolver(nameserver)?,
            query: query.to_owned(),
            basename: basename.to_owned(),
            interval,
        })
    }
}

impl Strategy for DnsSrv {
    fn candidates(&self) -> CandidatesFuture<'_> {
        Box::pin(async move {
            let dns = |query: &str, e: &dyn std::fmt::Display| DiscoveryError::Dns {
                query: query.to_owned(),
                detail: e.to_string(),
            };
            let records = match self.resolver.srv_lookup(self.query.as_str()).await {
                Ok(records) => records,
                Err(e) if e.is_no_records_found() => return Ok(Vec::new()),
                Err(e) => return Err(dns(&self.query, &e)),
            };
            let mut found = Vec::new();
            for record in records.answers() {
                let RData::SRV(srv) = &record.data else {
                    continue;
                };
                let target = srv.target.to_ascii();
                let host = target.trim_end_matches('.');
                let name = NodeName::new(format!("{}@{host}", self.basename))
                    .map_err(|e| dns(&self.query, &format!("SRV target {host}: {e}")))?;
                let ips = match self.resolver.lookup_ip(host).await {
                    Ok(ips) => ips,
                    // A target without an address yet (a pod starting).
                    Err(e) if e.is_no_records_found() => continue,
                    Err(e) => return Err(dns(host, &e)),
                };
                let addrs = ips.iter().map(|ip| SocketAddr::new(ip, srv.port)).collect();
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
        self.interval
    }
}
