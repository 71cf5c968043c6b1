//! `quicmesh node`: run one node until SIGINT or SIGTERM; SIGHUP reloads
//! its identity.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use std::time::Duration;

use quicmesh::{
    Consensus, ConsensusConfig, ConsensusError, ConsensusGuard, Coordination, IdentityConfig,
    LockOptions, Node, NodeAddr, NodeConfig, NodeEvent, NodeName, RegistryEvent,
};
use tokio::signal::unix::{SignalKind, signal};

use crate::say::say;

#[derive(Debug, Args)]
pub(crate) struct NodeArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// A hidden node: never propagated to other nodes.
    #[arg(long)]
    hidden: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (port 0 picks a free
    /// one; the address is printed as `metrics on http://ADDR/metrics`).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Before the actions below, wait until this many other nodes are
    /// connected.
    #[arg(long, default_value_t = 0)]
    wait_for: usize,
    /// Register NAME in the global registry (for a service of the same
    /// name); prints `registered NAME` or `not registered NAME: why`.
    /// Repeatable.
    #[arg(long = "register", value_name = "NAME")]
    register: Vec<String>,
    /// Take the cluster lock of RESOURCE and hold it until the node stops;
    /// prints `locked RESOURCE TOKEN`. Repeatable.
    #[arg(long = "lock", value_name = "RESOURCE")]
    lock: Vec<String>,
    /// Campaign in ELECTION until leading, then lead until the node stops;
    /// prints `leading ELECTION TERM`. Repeatable.
    #[arg(long = "campaign", value_name = "ELECTION")]
    campaign: Vec<String>,
    /// Read commands from stdin, one JSON object per line, and answer each
    /// on stdout as `reply {json}`: lock, release, campaign, resign,
    /// register, unregister, whereis, leader, status (for scripts and test
    /// drivers; the formats are in the crate docs of the `commands` module).
    #[arg(long)]
    commands: bool,
    /// Consensus mode: a voter of the Raft group, by name (name@host, no
    /// port). Repeatable; giving any turns consensus mode on, and every
    /// node of the cluster needs the same list. --register, --lock and
    /// --campaign then go through the group, and TOKEN and TERM are the
    /// Raft log index of the grant.
    #[arg(long = "consensus-voter", value_name = "NAME")]
    consensus_voter: Vec<NodeName>,
    /// Consensus mode: run a Raft member to be added to the running group
    /// (`quicmesh consensus add-voter`), though the --consensus-voter list
    /// (the current voters) does not name this node; it votes once added.
    #[arg(long)]
    consensus_join: bool,
    /// Consensus mode: where a voter keeps its Raft log, vote and snapshot
    /// (default ./quicmesh-data/<node name>).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Consensus mode: how long this node's session lives without a
    /// keep-alive (e.g. 3s, 1500ms; default 3s); what it holds is released
    /// when it runs out.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    session_ttl: Option<Duration>,
}

/// Who a process is in the cluster and whom it meets: the flags `quicmesh
/// node` and the admin commands share.
#[derive(Debug, Args)]
pub(crate) struct ClusterArgs {
    /// The node: name@host or name@host:port. The port (default 4370) is where it
    /// listens unless --listen says otherwise.
    #[arg(long)]
    pub(crate) name: Option<NodeAddr>,
    /// UDP address to listen on (port 0 picks a free one).
    #[arg(long)]
    pub(crate) listen: Option<SocketAddr>,
    /// The cluster cookie (default: $QUICMESH_COOKIE or ~/.quicmesh.cookie).
    #[arg(long, conflicts_with_all = ["ca", "cert", "key"])]
    cookie: Option<String>,
    /// Cookie file (mode 0600, must exist); wins over $QUICMESH_COOKIE.
    #[arg(long, conflicts_with_all = ["cookie", "ca", "cert", "key"])]
    cookie_file: Option<PathBuf>,
    /// Certificate mode: the CA certificate to trust.
    #[arg(long, requires_all = ["cert", "key"])]
    ca: Option<PathBuf>,
    /// Certificate mode: this node's certificate.
    #[arg(long, requires_all = ["ca", "key"])]
    cert: Option<PathBuf>,
    /// Certificate mode: this node's private key.
    #[arg(long, requires_all = ["ca", "cert"])]
    key: Option<PathBuf>,
    /// Certificate mode: the CA's revocation list (`quicmesh certs revoke`
    /// writes it); re-read with the other files on SIGHUP.
    #[arg(long, requires = "ca")]
    crl: Option<PathBuf>,
    /// Cookie mode, during a cookie rollover: a file holding the cookie
    /// being replaced; nodes still on it are trusted too.
    #[arg(long, conflicts_with_all = ["ca", "cert", "key"])]
    previous_cookie_file: Option<PathBuf>,
    /// Nodes to connect to and keep connected (name@host:port), repeatable.
    #[arg(long = "connect")]
    connect: Vec<NodeAddr>,
    /// A TOML configuration file; flags override its values.
    #[arg(long)]
    config: Option<PathBuf>,
}

impl ClusterArgs {
    /// The configuration file with the flags applied; the name may still
    /// be missing.
    pub(crate) fn into_config(self) -> anyhow::Result<NodeConfig> {
        let mut cfg = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                NodeConfig::from_toml(&text).with_context(|| format!("in {}", path.display()))?
            }
            None => NodeConfig::default(),
        };
        if let Some(addr) = self.name {
            cfg.listen = cfg.listen.or_else(|| {
                let host = addr.name.host().trim_matches(|c| c == '[' || c == ']');
                host.parse().ok().map(|ip| SocketAddr::new(ip, addr.port))
            });
            if cfg.listen.is_none() {
                cfg.listen = Some(SocketAddr::from(([0, 0, 0, 0], addr.port)));
            }
            cfg.name = Some(addr.name);
        }
        if let Some(listen) = self.listen {
            cfg.listen = Some(listen);
        }
        if self.cookie.is_some() {
            tracing::warn!(
                "--cookie puts the cookie in the process list, where every user of this \
                 machine can read it: prefer QUICMESH_COOKIE or --cookie-file"
            );
        }
        if self.cookie.is_some()
            || self.cookie_file.is_some()
            || self.previous_cookie_file.is_some()
        {
            cfg.identity = IdentityConfig::Cookie {
                cookie: self.cookie,
                cookie_file: self.cookie_file,
                previous_cookie: None,
                previous_cookie_file: self.previous_cookie_file,
            };
        }
        if let (Some(ca), Some(cert), Some(key)) = (self.ca, self.cert, self.key) {
            let crl = self.crl;
            cfg.identity = IdentityConfig::Certificate { ca, cert, key, crl };
        }
        cfg.seeds.extend(self.connect);
        Ok(cfg)
    }
}

/// What the node does once started.
struct Actions {
    wait_for: usize,
    commands: bool,
    register: Vec<String>,
    lock: Vec<String>,
    campaign: Vec<String>,
}

impl NodeArgs {
    fn actions(&mut self) -> Actions {
        Actions {
            wait_for: self.wait_for,
            commands: self.commands,
            register: std::mem::take(&mut self.register),
            lock: std::mem::take(&mut self.lock),
            campaign: std::mem::take(&mut self.campaign),
        }
    }

    fn into_config(self) -> anyhow::Result<NodeConfig> {
        let mut cfg = self.cluster.into_config()?;
        cfg.hidden |= self.hidden;
        if let Some(metrics) = self.metrics {
            cfg.metrics = Some(metrics);
        }
        if !self.consensus_voter.is_empty() {
            cfg.coordination = Coordination::Consensus;
            cfg.consensus
                .get_or_insert_with(ConsensusConfig::default)
                .voters = self.consensus_voter;
        }
        if self.data_dir.is_some() || self.session_ttl.is_some() || self.consensus_join {
            let on = cfg.coordination == Coordination::Consensus;
            let Some(consensus) = cfg.consensus.as_mut().filter(|_| on) else {
                anyhow::bail!(
                    "--data-dir, --session-ttl and --consensus-join are for consensus mode: name \
                     the voters with --consensus-voter (or coordination = \"consensus\" in \
                     --config)"
                );
            };
            consensus.join |= self.consensus_join;
            if let Some(dir) = self.data_dir {
                consensus.data_dir = Some(dir);
            }
            if let Some(ttl) = self.session_ttl {
                consensus.session_ttl = ttl;
            }
        }
        if cfg.name.is_none() {
            anyhow::bail!(
                "give the node a name: --name app1@127.0.0.1:4370 (or `name` in --config)"
            );
        }
        Ok(cfg)
    }
}

pub(crate) async fn run(mut args: NodeArgs) -> anyhow::Result<()> {
    let actions = args.actions();
    let config = args.into_config()?;
    // Taken before the node starts: a SIGHUP meant as a reload must not
    // end a node that is still starting (it is then read once running).
    let mut hup = signal(SignalKind::hangup())?;
    let metrics = config.metrics;
    let node = quicmesh::Builder::from_config(config).start().await?;
    // The first line on stdout says where the node is (scripts read it).
    say(format_args!("listening {}", node.addr()));
    // Served until this function returns.
    let _metrics = match metrics {
        Some(addr) => {
            let server = crate::metrics::serve(addr, &node).await?;
            say(format_args!("metrics on http://{}/metrics", server.addr));
            Some(server)
        }
        None => None,
    };
    let mut events = node.events();
    // Seeds are dialled as the node starts: one may be up before the event
    // stream opened. Say so once, whichever way it is learnt.
    let mut up: std::collections::HashSet<NodeName> = node.nodes().into_iter().collect();
    for peer in &up {
        say(format_args!("up {peer}"));
    }
    let mut registry = node.registry().events();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut acting = tokio::task::JoinSet::new();
    acting.spawn(act(node.clone(), actions));
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload(&node).await,
            e = events.recv() => match e {
                Ok(NodeEvent::NodeUp { node, .. }) => {
                    if up.insert(node.clone()) {
                        say(format_args!("up {node}"));
                    }
                }
                Ok(NodeEvent::NodeDown { node, reason }) => {
                    up.remove(&node);
                    say(format_args!("down {node} {reason}"));
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("{e}"),
            },
            e = registry.recv() => match e {
                Ok(RegistryEvent::Registered(r)) => say(format_args!("registry registered {} {}", r.name, r.owner)),
                Ok(RegistryEvent::Unregistered { registration: r, .. }) => {
                    say(format_args!("registry unregistered {} {}", r.name, r.owner));
                }
                Ok(RegistryEvent::Conflict { kept, dropped }) => say(format_args!(
                    "registry conflict {} kept {} dropped {}",
                    kept.name, kept.owner, dropped.owner
                )),
                Ok(_) => {}
                Err(e) => tracing::warn!("registry events: {e}"),
            },
        }
    }
    // Leaderships and locks end with the node: peers see it go down.
    acting.abort_all();
    node.shutdown().await;
    Ok(())
}

/// SIGHUP: reads the identity's files again. The outcome goes to stdout
/// (`reloaded CA <fingerprint>` or `reload refused: <why>`) for scripts.
async fn reload(node: &Node) {
    match node.reload_identity().await {
        Ok(r) => {
            for peer in &r.revoked {
                tracing::warn!(%peer, "dropped: its certificate is revoked");
            }
            say(format_args!("reloaded CA {}", r.ca_fingerprint));
        }
        Err(e) => {
            tracing::error!("identity not reloaded, keeping the one in use: {e}");
            say(format_args!("reload refused: {e}"));
        }
    }
}

/// Registers, locks and campaigns as the flags say (through the Raft
/// group in consensus mode), then holds what it got until aborted.
async fn act(node: Node, actions: Actions) {
    if actions.wait_for > 0 {
        if let Err(e) = node
            .wait_for_nodes(actions.wait_for, Duration::from_secs(3600))
            .await
        {
            tracing::warn!("{e}");
            return;
        }
    }
    // What it holds, each in a task that says when it is lost; aborting
    // `act` drops the set, and with it every guard and leadership.
    let mut held = tokio::task::JoinSet::new();
    match node.consensus() {
        Some(consensus) => act_in_consensus(consensus, &actions, &mut held).await,
        None => act_in_global(&node, &actions, &mut held).await,
    }
    if actions.commands {
        crate::commands::serve(node).await;
    }
    std::future::pending::<()>().await;
}

async fn act_in_global(node: &Node, actions: &Actions, held: &mut tokio::task::JoinSet<()>) {
    for name in &actions.register {
        let registered = node.registry().register(name, name).await.map(|_| ());
        say_registered(name, registered);
    }
    for resource in &actions.lock {
        match node
            .lock_with(resource, &LockOptions::default().timeout(Duration::MAX))
            .await
        {
            Ok(guard) => {
                let (resource, token) = (resource.clone(), guard.token());
                say(format_args!("locked {resource} {token}"));
                held.spawn(async move {
                    guard.lost().await;
                    say(format_args!("lost lock {resource} {token}"));
                });
            }
            Err(e) => say(format_args!("not locked {resource}: {e}")),
        }
    }
    for election in &actions.campaign {
        let mut changes = node.election(election).observe();
        let name = election.clone();
        held.spawn(async move {
            while let Ok(change) = changes.recv().await {
                match change.leader {
                    Some(leader) => say(format_args!("leader {name} {leader} {}", change.term)),
                    None => say(format_args!("leader {name} none {}", change.term)),
                }
            }
        });
        match node.election(election).campaign().await {
            Ok(leadership) => {
                let (election, term) = (election.clone(), leadership.term());
                say(format_args!("leading {election} {term}"));
                held.spawn(async move {
                    leadership.lost().await;
                    say(format_args!("lost leadership {election} {term}"));
                });
            }
            Err(e) => say(format_args!("not leading {election}: {e}")),
        }
    }
}

/// The same actions through the Raft group: locks and leaderships are
/// waited for until granted, one `request_timeout` per attempt.
async fn act_in_consensus(
    consensus: &Consensus,
    actions: &Actions,
    held: &mut tokio::task::JoinSet<()>,
) {
    for name in &actions.register {
        let registered = until_quorum("registration", name, || consensus.register(name)).await;
        say_registered(name, registered);
    }
    let kinds = [
        (Grant::Lock, &actions.lock),
        (Grant::Leadership, &actions.campaign),
    ];
    for (kind, keys) in kinds {
        for key in keys {
            match take(consensus, kind, key).await {
                Ok(guard) => {
                    let (key, token) = (key.clone(), guard.token());
                    say(format_args!("{} {key} {token}", kind.granted()));
                    held.spawn(async move {
                        guard.lost().await;
                        say(format_args!("lost {} {key} {token}", kind.noun()));
                    });
                }
                Err(e) => say(format_args!("{} {key}: {e}", kind.refused())),
            }
        }
    }
}

/// What a consensus-mode action takes.
#[derive(Debug, Clone, Copy)]
enum Grant {
    Lock,
    Leadership,
}

impl Grant {
    fn granted(self) -> &'static str {
        match self {
            Self::Lock => "locked",
            Self::Leadership => "leading",
        }
    }

    fn refused(self) -> &'static str {
        match self {
            Self::Lock => "not locked",
            Self::Leadership => "not leading",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Self::Lock => "lock",
            Self::Leadership => "leadership",
        }
    }
}

/// Takes the lock or leadership `key`, retrying while another node holds
/// it or no quorum answers; any other error ends the wait.
async fn take(
    consensus: &Consensus,
    kind: Grant,
    key: &str,
) -> Result<ConsensusGuard, ConsensusError> {
    let attempt = consensus.config().request_timeout;
    loop {
        let taken = until_quorum(kind.noun(), key, || async {
            match kind {
                Grant::Lock => consensus.lock(key, attempt).await,
                Grant::Leadership => consensus.campaign(key, attempt).await,
            }
        })
        .await;
        match taken {
            Err(ConsensusError::Timeout { .. }) => {}
            other => return other,
        }
    }
}

/// Runs `attempt` again for as long as it fails for want of a quorum or
/// a session (the group may be electing a leader); any other outcome is
/// returned.
async fn until_quorum<T, F, Fut>(what: &str, key: &str, attempt: F) -> Result<T, ConsensusError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, ConsensusError>>,
{
    loop {
        match attempt().await {
            Err(e @ (ConsensusError::NoQuorum { .. } | ConsensusError::SessionExpired)) => {
                tracing::warn!("{what} {key}: {e}; trying again");
            }
            other => return other,
        }
    }
}

/// Prints `registered NAME` or `not registered NAME: why`.
fn say_registered<E: std::fmt::Display>(name: &str, outcome: Result<(), E>) {
    match outcome {
        Ok(()) => say(format_args!("registered {name}")),
        Err(e) => say(format_args!("not registered {name}: {e}")),
    }
}

/// A duration flag: whole milliseconds (`1500ms`) or seconds (`3s`, `3`).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        _ => Err(format!("invalid duration {s:?}: use ms or s")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        node: NodeArgs,
    }

    fn config(args: &[&str]) -> anyhow::Result<NodeConfig> {
        let flags = Flags::try_parse_from(["node", "--name", "a@127.0.0.1:0"].iter().chain(args))?;
        flags.node.into_config()
    }

    #[test]
    fn consensus_flags_turn_the_mode_on_and_override_the_defaults() {
        let global = config(&[]).expect("global config");
        assert_eq!(global.coordination, Coordination::Global);
        assert_eq!(global.consensus, None);
        let cfg = config(&[
            "--consensus-voter",
            "a@127.0.0.1",
            "--consensus-voter",
            "b@127.0.0.1",
            "--data-dir",
            "/tmp/a",
            "--session-ttl",
            "1500ms",
        ])
        .expect("consensus config");
        assert_eq!(cfg.coordination, Coordination::Consensus);
        let c = cfg.consensus.expect("a [consensus] section");
        assert_eq!(c.voters.len(), 2);
        assert_eq!(c.data_dir, Some(PathBuf::from("/tmp/a")));
        assert_eq!(c.session_ttl, Duration::from_millis(1500));
        assert_eq!(c.heartbeat, ConsensusConfig::default().heartbeat);
    }

    #[test]
    fn consensus_settings_without_the_mode_are_refused() {
        let e = config(&["--data-dir", "/tmp/a"]).expect_err("no voters");
        assert!(e.to_string().contains("--consensus-voter"), "{e}");
        let e = config(&["--session-ttl", "3 s"]).expect_err("bad duration");
        assert!(e.to_string().contains("invalid duration"), "{e}");
    }
}
