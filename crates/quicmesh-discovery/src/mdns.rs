//! The `mdns` strategy: multicast DNS service discovery on the local link
//! (mdns-sd), for LANs where there is no DNS server to ask.
//!
//! Each node advertises one `_quicmesh._udp.local.` instance whose TXT
//! record holds its node name (`node`) and its cluster tag (`tag`): the
//! fingerprint of the CA public key the node trusts, never anything derived
//! from the cookie alone. Each node browses the same service type and
//! reports as candidates only the instances with its own tag. Records of
//! other clusters on the same link are ignored: never dialled.
//!
//! A record goes away three ways: its node withdraws it when it shuts down
//! (a goodbye packet), its TTL runs out, or this node re-verifies it (RFC
//! 6762, 10.4) after the node it names stopped being connected and nobody
//! answers within `verify_timeout`.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mdns_sd::{IfKind, ResolvedService, ServiceDaemon, ServiceEvent, ServiceInfo};
use quicmesh_wire::{NodeAddr, NodeName};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{Candidate, CandidatesFuture, DiscoveryError, LocalNode, SignalFuture, Strategy};

/// The DNS-SD service type every node advertises and browses.
pub const SERVICE_TYPE: &str = "_quicmesh._udp.local.";

/// At most this many instances are remembered (the link is not trusted: a
/// flood of records must not grow the table without bound).
const MAX_INSTANCES: usize = 1024;

/// A record that answered a re-verification is not asked again sooner.
const REVERIFY_AFTER: Duration = Duration::from_secs(30);

/// How long shutdown waits for the daemon to withdraw this node's record.
const WITHDRAW_TIMEOUT: Duration = Duration::from_secs(1);

/// TXT keys.
const TXT_NODE: &str = "node";
const TXT_TAG: &str = "tag";

/// Options of the `mdns` strategy.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MdnsOptions {
    /// How often to look at the browsed records (new ones are taken at once)
    /// and re-verify the records of nodes that are not connected.
    pub polling_interval: Duration,
    /// How long a re-verified record has to answer before it is dropped.
    pub verify_timeout: Duration,
    /// Network interfaces (by name) to advertise and browse on; empty: all
    /// but loopback.
    pub interfaces: Vec<String>,
}

impl Default for MdnsOptions {
    fn default() -> Self {
        Self {
            polling_interval: Duration::from_secs(5),
            verify_timeout: Duration::from_secs(2),
            interfaces: Vec::new(),
        }
    }
}

/// Advertises this node over mDNS and reports the nodes of the same
/// cluster it hears of (see the module docs).
pub struct Mdns {
    daemon: ServiceDaemon,
    /// This node's advertised instance.
    fullname: String,
    options: MdnsOptions,
    heard: Arc<Heard>,
    /// The task reading the browse's events; ends with the daemon.
    browser: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Mdns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mdns")
            .field("fullname", &self.fullname)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// What the browser has heard, shared with the strategy.
#[derive(Debug)]
struct Heard {
    me: NodeName,
    tag: String,
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// Instances of this cluster, by full name.
    peers: HashMap<String, Peer>,
    /// Instances of other clusters or without a usable TXT record (logged
    /// once each).
    ignored: HashSet<String>,
}

impl State {
    /// Notes an instance as ignored; `true` the first time (log it then).
    /// Past [`MAX_INSTANCES`] nothing more is noted, nor logged.
    fn ignore(&mut self, fullname: &str) -> bool {
        self.ignored.len() < MAX_INSTANCES && self.ignored.insert(fullname.to_owned())
    }
}

#[derive(Debug)]
struct Peer {
    candidate: Candidate,
    /// When this node last asked for the record to be re-verified.
    verified: Option<Instant>,
}

impl Mdns {
    /// Starts advertising `local` and browsing for its cluster. Needs a
    /// Tokio runtime.
    pub fn start(local: &LocalNode, options: MdnsOptions) -> Result<Self, DiscoveryError> {
        let daemon = ServiceDaemon::new().map_err(|e| mdns_failed("cannot start the daemon", e))?;
        let started = Self::advertise(&daemon, local, &options).inspect_err(|_| {
            let _ = daemon.shutdown();
        })?;
        let heard = Arc::new(Heard {
            me: local.name.clone(),
            tag: local.cluster_tag.clone(),
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        });
        let events = match daemon.browse(SERVICE_TYPE) {
            Ok(events) => events,
            Err(e) => {
                let _ = daemon.shutdown();
                return Err(mdns_failed("cannot browse", e));
            }
        };
        let browser = tokio::spawn(browse(events, heard.clone()));
        info!(instance = %started, "advertising over mDNS");
        Ok(Self {
            daemon,
            fullname: started,
            options,
            heard,
            browser: Mutex::new(Some(browser)),
        })
    }

    /// Selects the interfaces and registers this node's instance; returns
    /// its full name.
    fn advertise(
        daemon: &ServiceDaemon,
        local: &LocalNode,
        options: &MdnsOptions,
    ) -> Result<String, DiscoveryError> {
        let interfaces = if options.interfaces.is_empty() {
            daemon.disable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6])
        } else {
            daemon.disable_interface(IfKind::All).and_then(|()| {
                daemon.enable_interface(
                    options
                        .interfaces
                        .iter()
                        .map(|n| IfKind::Name(n.clone()))
                        .collect::<Vec<_>>(),
                )
            })
        };
        interfaces.map_err(|e| mdns_failed("cannot select interfaces", e))?;

        let instance = instance_name(&local.name, &local.cluster_tag);
        let host = format!("{instance}.local.");
        let txt = [
            (TXT_NODE, local.name.as_str()),
            (TXT_TAG, local.cluster_tag.as_str()),
        ];
        let ip = local.addr.ip();
        let info = if ip.is_unspecified() {
            // Listening on every address: advertise the interfaces' own.
            ServiceInfo::new(
                SERVICE_TYPE,
                &instance,
                &host,
                (),
                local.addr.port(),
                &txt[..],
            )
            .map(ServiceInfo::enable_addr_auto)
        } else {
            ServiceInfo::new(
                SERVICE_TYPE,
                &instance,
                &host,
                ip,
                local.addr.port(),
                &txt[..],
            )
        }
        .map_err(|e| mdns_failed("bad service record", e))?;
        let fullname = info.get_fullname().to_owned();
        daemon
            .register(info)
            .map_err(|e| mdns_failed("cannot register", e))?;
        Ok(fullname)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.heard.state()
    }
}

impl Heard {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A resolved (or re-resolved) instance: keep it if it is a usable peer
    /// of this cluster.
    fn resolved(&self, service: &ResolvedService) {
        let fullname = service.get_fullname();
        let node = match peer_of(service, &self.tag) {
            Ok(node) => node,
            Err(why) => {
                if self.state().ignore(fullname) {
                    info!(instance = %fullname, "mDNS: ignoring a record: {why}");
                }
                return;
            }
        };
        if node.name == self.me {
            return;
        }
        let addrs = dialable(
            service.get_addresses().iter().map(|a| a.to_ip_addr()),
            node.port,
        );
        if addrs.is_empty() {
            // The first answers may only hold loopback or link-local
            // addresses; the usable ones follow.
            return;
        }
        let changed = {
            let mut state = self.state();
            let known = state.peers.len();
            match state.peers.get_mut(fullname) {
                Some(peer) if peer.candidate.node == node && peer.candidate.addrs == addrs => false,
                Some(peer) => {
                    peer.candidate = Candidate::at(node, addrs);
                    true
                }
                None if known >= MAX_INSTANCES => {
                    if state.ignore(fullname) {
                        warn!(instance = %fullname, "mDNS: already {known} instances heard of; ignoring more");
                    }
                    false
                }
                None => {
                    info!(peer = %node, instance = %fullname, "mDNS: found a node of this cluster");
                    state.peers.insert(
                        fullname.to_owned(),
                        Peer {
                            candidate: Candidate::at(node, addrs),
                            verified: None,
                        },
                    );
                    true
                }
            }
        };
        if changed {
            self.changed.notify_one();
        }
    }

    /// An instance's record is gone (withdrawn, expired or not confirmed).
    fn removed(&self, fullname: &str) {
        let mut state = self.state();
        state.ignored.remove(fullname);
        if let Some(peer) = state.peers.remove(fullname) {
            info!(peer = %peer.candidate.node.name, instance = %fullname, "mDNS: record gone");
            drop(state);
            self.changed.notify_one();
        }
    }
}

/// Reads the events of the browse until the daemon stops.
async fn browse(events: mdns_sd::Receiver<ServiceEvent>, heard: Arc<Heard>) {
    while let Ok(event) = events.recv_async().await {
        match event {
            ServiceEvent::ServiceResolved(service) => heard.resolved(&service),
            ServiceEvent::ServiceRemoved(_, fullname) => heard.removed(&fullname),
            _ => {}
        }
    }
}

impl Strategy for Mdns {
    fn candidates(&self) -> CandidatesFuture<'_> {
        let found = self
            .state()
            .peers
            .values()
            .map(|p| p.candidate.clone())
            .collect();
        Box::pin(async move { Ok(found) })
    }

    fn polling_interval(&self) -> Duration {
        self.options.polling_interval
    }

    fn changed(&self) -> SignalFuture<'_> {
        Box::pin(self.heard.changed.notified())
    }

    fn not_connected(&self, node: &NodeName) {
        let now = Instant::now();
        let mut state = self.state();
        let Some((fullname, peer)) = state
            .peers
            .iter_mut()
            .find(|(_, p)| p.candidate.node.name == *node)
        else {
            return;
        };
        if peer
            .verified
            .is_some_and(|at| now.duration_since(at) < REVERIFY_AFTER)
        {
            return;
        }
        peer.verified = Some(now);
        let timeout = self.options.verify_timeout;
        info!(peer = %node, instance = %fullname, "not connected: re-verifying its mDNS record (it goes unless answered within {timeout:?})");
        if let Err(e) = self.daemon.verify(fullname.clone(), timeout) {
            warn!(peer = %node, "mDNS: cannot re-verify the record: {e}");
        }
    }

    fn stop(&self) -> SignalFuture<'_> {
        Box::pin(async move {
            match self.daemon.unregister(&self.fullname) {
                Ok(done) => match tokio::time::timeout(WITHDRAW_TIMEOUT, done.recv_async()).await {
                    Ok(Ok(_)) => debug!("mDNS record withdrawn"),
                    _ => warn!(
                        "mDNS: the record's withdrawal was not confirmed within {WITHDRAW_TIMEOUT:?}"
                    ),
                },
                Err(e) => warn!("mDNS: cannot withdraw this node's record: {e}"),
            }
            if let Ok(done) = self.daemon.shutdown() {
                let _ = tokio::time::timeout(WITHDRAW_TIMEOUT, done.recv_async()).await;
            }
            // The daemon has stopped, so its events end and so does the
            // browser; wait for it, bounded.
            let browser = self
                .browser
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(browser) = browser {
                let _ = tokio::time::timeout(WITHDRAW_TIMEOUT, browser).await;
            }
        })
    }
}

impl Drop for Mdns {
    fn drop(&mut self) {
        // Ends the daemon's thread if `stop` did not (a failed start).
        let _ = self.daemon.shutdown();
        if let Some(browser) = self
            .browser
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            browser.abort();
        }
    }
}

/// A daemon call that failed, as a discovery error.
fn mdns_failed(what: &str, e: mdns_sd::Error) -> DiscoveryError {
    DiscoveryError::Other(format!("mDNS: {what}: {e}"))
}

/// The node a record names, if it is one of this cluster's.
fn peer_of(service: &ResolvedService, tag: &str) -> Result<NodeAddr, String> {
    let name = service
        .get_property_val_str(TXT_NODE)
        .ok_or("no `node` in its TXT record")?;
    let theirs = service
        .get_property_val_str(TXT_TAG)
        .ok_or("no cluster `tag` in its TXT record")?;
    if theirs != tag {
        return Err(format!(
            "node {name} is in another cluster (tag {theirs}, this cluster's is {tag})"
        ));
    }
    let name = NodeName::new(name).map_err(|e| format!("bad node name {name:?}: {e}"))?;
    Ok(NodeAddr {
        name,
        port: service.get_port(),
    })
}

/// The addresses worth dialling, IPv4 first: no loopback (another host's
/// record naming 127.0.0.1 would reach this one), no link-local (it needs a
/// scope), no multicast or unspecified address.
fn dialable(ips: impl Iterator<Item = IpAddr>, port: u16) -> Vec<SocketAddr> {
    let mut addrs: Vec<SocketAddr> = ips
        .filter(|ip| match ip {
            IpAddr::V4(v4) => {
                !(v4.is_loopback()
                    || v4.is_link_local()
                    || v4.is_multicast()
                    || v4.is_unspecified()
                    || v4.is_broadcast())
            }
            IpAddr::V6(v6) => {
                !(v6.is_loopback()
                    || v6.is_unicast_link_local()
                    || v6.is_multicast()
                    || v6.is_unspecified())
            }
        })
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    addrs.sort_by_key(|a| (a.is_ipv6(), *a));
    addrs.dedup();
    addrs
}

/// A DNS-SD instance label for this node: its name with anything but
/// letters, digits and `-` made `-`, and the start of the cluster tag, so
/// that equally named nodes of two clusters do not collide. At most 63
/// bytes (one DNS label).
fn instance_name(name: &NodeName, tag: &str) -> String {
    let tag: String = tag.chars().take(8).collect();
    let keep = 63 - tag.len() - 1;
    let mut label: String = name
        .as_str()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(keep)
        .collect();
    label.push('-');
    label.push_str(&tag);
    label
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_are_one_safe_label() {
        let name = NodeName::new("App_1@10.77.0.1").expect("name");
        assert_eq!(
            instance_name(&name, "0123456789abcdef"),
            "app-1-10-77-0-1-01234567"
        );
        let long = NodeName::new(format!("{}@{}", "a".repeat(60), "h".repeat(60))).expect("name");
        let label = instance_name(&long, "0123456789abcdef");
        assert_eq!(label.len(), 63);
        assert!(label.ends_with("-01234567"));
    }

    #[test]
    fn only_addresses_another_host_can_reach_are_dialled() {
        let ips = [
            "127.0.0.1",
            "::1",
            "fe80::1",
            "169.254.3.4",
            "224.0.0.251",
            "0.0.0.0",
            "fd00::5",
            "10.77.0.2",
            "10.77.0.2",
        ]
        .map(|s| s.parse::<IpAddr>().expect("ip"));
        let got = dialable(ips.into_iter(), 4370);
        let want: Vec<SocketAddr> = ["10.77.0.2:4370", "[fd00::5]:4370"]
            .iter()
            .map(|s| s.parse().expect("addr"))
            .collect();
        assert_eq!(got, want);
    }
}
