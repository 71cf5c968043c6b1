//! `quicmesh node`: run one node until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use quicmesh::{IdentityConfig, NodeAddr, NodeConfig, NodeEvent};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Args)]
pub(crate) struct NodeArgs {
    /// The node: name@host or name@host:port. The port (default 4370) is where it
    /// listens unless --listen says otherwise.
    #[arg(long)]
    name: Option<NodeAddr>,
    /// UDP address to listen on (port 0 picks a free one).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The cluster cookie (default: $QUICMESH_COOKIE or ~/.quicmesh.cookie).
    #[arg(long, conflicts_with_all = ["ca", "cert", "key"])]
    cookie: Option<String>,
    /// Cookie file to use instead of ~/.quicmesh.cookie.
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
    /// Nodes to connect to and keep connected (name@host:port), repeatable.
    #[arg(long = "connect")]
    connect: Vec<NodeAddr>,
    /// A hidden node: never propagated to other nodes.
    #[arg(long)]
    hidden: bool,
    /// A TOML configuration file; flags override its values.
    #[arg(long)]
    config: Option<PathBuf>,
}

impl NodeArgs {
    fn into_config(self) -> anyhow::Result<NodeConfig> {
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
        if self.cookie.is_some() || self.cookie_file.is_some() {
            cfg.identity = IdentityConfig::Cookie {
                cookie: self.cookie,
                cookie_file: self.cookie_file,
            };
        }
        if let (Some(ca), Some(cert), Some(key)) = (self.ca, self.cert, self.key) {
            cfg.identity = IdentityConfig::Certificate { ca, cert, key };
        }
        cfg.seeds.extend(self.connect);
        cfg.hidden |= self.hidden;
        if cfg.name.is_none() {
            anyhow::bail!(
                "give the node a name: --name app1@127.0.0.1:4370 (or `name` in --config)"
            );
        }
        Ok(cfg)
    }
}

pub(crate) async fn run(args: NodeArgs) -> anyhow::Result<()> {
    let config = args.into_config()?;
    let node = quicmesh::Builder::from_config(config).start().await?;
    // The first line on stdout says where the node is (scripts read it).
    say(format_args!("listening {}", node.addr()));
    let mut events = node.events();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            e = events.recv() => match e {
                Ok(NodeEvent::NodeUp { node, .. }) => say(format_args!("up {node}")),
                Ok(NodeEvent::NodeDown { node, reason }) => say(format_args!("down {node} {reason}")),
                Ok(_) => {}
                Err(e) => tracing::warn!("{e}"),
            },
        }
    }
    node.shutdown().await;
    Ok(())
}

/// Prints one line to stdout; a reader that went away (closed pipe) must
/// not take the node down with it, so write errors are ignored.
pub(crate) fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}
