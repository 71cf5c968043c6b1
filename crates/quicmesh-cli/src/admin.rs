//! The admin commands: join a running cluster as a short-lived hidden node
//! with the cluster's identity, ask one node, print a table (or JSON with
//! `--json`), leave.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use quicmesh::admin::{ConsensusMembersReport, NodeReport, PeerReport, Rows};
use quicmesh::{IdentityConfig, Node, NodeAddr, NodeConfig, NodeName};
use serde::Serialize;

use crate::node::ClusterArgs;
use crate::node::parse_duration;

/// The questions, one command each.
#[derive(Debug, Subcommand)]
pub(crate) enum AdminCommand {
    /// Show a node's status: version, incarnation, CA, peers, counters.
    Status(AdminArgs),
    /// List the cluster's nodes as the node asked sees them.
    Members(AdminArgs),
    /// Connect to NODE (name@host:port) and measure round trips.
    Ping {
        /// The node to ping.
        node: NodeAddr,
        /// How many round trips.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
        count: u32,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Say which node a name of the global registry is on (exit code 1 if
    /// none).
    Whereis {
        /// The registered name.
        #[arg(value_name = "NAME")]
        registered: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List the names of the global registry.
    Names(ListArgs),
    /// List the elections and who leads each.
    Leaders(ListArgs),
    /// List the cluster locks held and their fencing tokens.
    Locks(ListArgs),
    /// Consensus mode: show or change the voters of the Raft group.
    #[command(subcommand)]
    Consensus(ConsensusCommand),
}

/// The voters of a consensus-mode group, asked of (and changed through)
/// one running node of the cluster.
#[derive(Debug, Subcommand)]
pub(crate) enum ConsensusCommand {
    /// List the voters and learners of the group's committed membership.
    Members(AdminArgs),
    /// Make NODE a voter: start it first with --consensus-join (and the
    /// current voters as --consensus-voter), connected to the cluster;
    /// it is admitted, catches up with the log, then votes. One change at
    /// a time.
    AddVoter(ChangeArgs),
    /// Remove NODE from the voters; the group forgets it. A voter whose
    /// data directory was lost is removed, then added again.
    RemoveVoter(ChangeArgs),
}

/// A change of the voters.
#[derive(Debug, Args)]
pub(crate) struct ChangeArgs {
    /// The node (name@host, no port).
    #[arg(value_name = "NODE")]
    node: NodeName,
    /// How long the change may take (a new voter catching up included).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    wait: Duration,
    #[command(flatten)]
    admin: AdminArgs,
}

/// How to join the cluster and how to answer.
#[derive(Debug, Args)]
pub(crate) struct AdminArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Print one JSON document (shapes in the README) instead of a table.
    #[arg(long)]
    json: bool,
    /// How long to wait for the connection and for each answer.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
}

/// An admin command that lists rows.
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Show at most this many rows (the total is said below them).
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    #[command(flatten)]
    admin: AdminArgs,
}

/// What to ask, once joined.
enum Question {
    Status,
    Members,
    Ping { target: NodeAddr, count: u32 },
    Whereis(String),
    Names(usize),
    Leaders(usize),
    Locks(usize),
    ConsensusMembers,
    AddVoter(NodeName, Duration),
    RemoveVoter(NodeName, Duration),
}

pub(crate) async fn run(command: AdminCommand) -> anyhow::Result<()> {
    let (mut args, question) = match command {
        AdminCommand::Status(args) => (args, Question::Status),
        AdminCommand::Members(args) => (args, Question::Members),
        AdminCommand::Ping { node, count, admin } => (
            admin,
            Question::Ping {
                target: node,
                count,
            },
        ),
        AdminCommand::Whereis { registered, admin } => (admin, Question::Whereis(registered)),
        AdminCommand::Names(l) => (l.admin, Question::Names(l.limit)),
        AdminCommand::Leaders(l) => (l.admin, Question::Leaders(l.limit)),
        AdminCommand::Locks(l) => (l.admin, Question::Locks(l.limit)),
        AdminCommand::Consensus(ConsensusCommand::Members(args)) => {
            (args, Question::ConsensusMembers)
        }
        AdminCommand::Consensus(ConsensusCommand::AddVoter(c)) => {
            (c.admin, Question::AddVoter(c.node, c.wait))
        }
        AdminCommand::Consensus(ConsensusCommand::RemoveVoter(c)) => {
            (c.admin, Question::RemoveVoter(c.node, c.wait))
        }
    };
    let json = std::mem::take(&mut args.json);
    // A ping joins the node pinged, and only that one.
    let only = match &question {
        Question::Ping { target, .. } => Some(target.clone()),
        _ => None,
    };
    let session = Session::join(args, only).await?;
    let answered = session.ask(question, json).await;
    // Leave at once: the node asked sees a hidden node shut down.
    session.node.shutdown().await;
    answered
}

/// A hidden node connected to one node of the cluster, for one question.
struct Session {
    node: Node,
    /// The node the question goes to.
    asked: NodeName,
    timeout: Duration,
}

impl Session {
    /// Starts the hidden node and connects it to `only`, or else to the
    /// first of the `--connect` nodes (or the config's seeds) that answers.
    async fn join(args: AdminArgs, only: Option<NodeAddr>) -> anyhow::Result<Self> {
        let (node, mut seeds) = start_hidden(args.cluster, only.as_ref()).await?;
        if let Some(only) = only {
            seeds = vec![only];
        }
        if seeds.is_empty() {
            node.shutdown().await;
            anyhow::bail!(
                "say which node to ask: --connect NAME@HOST:PORT (or `seeds` in --config)"
            );
        }
        let mut failures = Vec::new();
        for seed in &seeds {
            match tokio::time::timeout(args.timeout, node.connect(seed)).await {
                Ok(Ok(())) => {
                    return Ok(Self {
                        node,
                        asked: seed.name.clone(),
                        timeout: args.timeout,
                    });
                }
                Ok(Err(e)) => failures.push(e.to_string()),
                Err(_) => failures.push(format!(
                    "no connection to {seed} within {:?}: is it running and reachable?",
                    args.timeout
                )),
            }
        }
        node.shutdown().await;
        match &seeds[..] {
            [one] => anyhow::bail!("could not reach {one}: {}", failures.join("; ")),
            _ => anyhow::bail!("could not reach the cluster: {}", failures.join("; ")),
        }
    }

    /// Asks, and prints the answer as a table or as JSON.
    async fn ask(&self, question: Question, json: bool) -> anyhow::Result<()> {
        let admin = self.node.admin(&self.asked);
        match question {
            Question::Status => {
                let report = self.within(admin.status()).await?;
                print(json, &report, status_table)
            }
            Question::Members => {
                let report = self.within(admin.status()).await?;
                print(json, &Members::of(&report, self.node.name()), members_table)
            }
            Question::Ping { target, count } => self.ping(&target.name, count, json).await,
            Question::Whereis(name) => {
                let found = self.within(admin.whereis(&name)).await?;
                print(json, &found, |found| match found {
                    Some(r) => format!("{} {} (service {})\n", r.name, r.node, r.service),
                    None => String::new(),
                })?;
                match found {
                    Some(_) => Ok(()),
                    None => anyhow::bail!("{name} is not registered (as {} knows)", self.asked),
                }
            }
            Question::Names(limit) => {
                let rows = self.within(admin.names(limit)).await?;
                print_rows(json, &rows, &["NAME", "NODE", "SERVICE"], "names", |r| {
                    vec![r.name.clone(), r.node.to_string(), r.service.clone()]
                })
            }
            Question::Leaders(limit) => {
                let rows = self.within(admin.leaders(limit)).await?;
                print_rows(
                    json,
                    &rows,
                    &["ELECTION", "LEADER", "TERM"],
                    "elections",
                    |r| {
                        let leader = r
                            .leader
                            .as_ref()
                            .map_or_else(|| "none".to_owned(), ToString::to_string);
                        vec![r.election.clone(), leader, r.term.clone()]
                    },
                )
            }
            Question::ConsensusMembers => {
                let m = self.within(admin.consensus_members()).await?;
                Self::print_membership(json, &m)
            }
            Question::AddVoter(node, wait) => {
                let m = self.changing(wait, admin.add_voter(&node, wait)).await?;
                Self::print_membership(json, &m)
            }
            Question::RemoveVoter(node, wait) => {
                let m = self.changing(wait, admin.remove_voter(&node, wait)).await?;
                Self::print_membership(json, &m)
            }
            Question::Locks(limit) => {
                let rows = self.within(admin.locks(limit)).await?;
                print_rows(
                    json,
                    &rows,
                    &["RESOURCE", "HOLDER", "TOKEN"],
                    "locks",
                    |r| {
                        let token = r
                            .token
                            .clone()
                            .unwrap_or_else(|| "(being granted)".to_owned());
                        vec![r.resource.clone(), r.holder.to_string(), token]
                    },
                )
            }
        }
    }

    /// Prints a consensus membership: who is asked, the voters, the
    /// learners.
    fn print_membership(json: bool, m: &ConsensusMembersReport) -> anyhow::Result<()> {
        print(json, m, |m| {
            let mut rows: Vec<(String, &str)> =
                m.voters.iter().map(|n| (n.to_string(), "voter")).collect();
            rows.extend(m.learners.iter().map(|n| (n.to_string(), "learner")));
            let mut out = table(
                &["NODE", "ROLE"],
                &rows,
                rows.len(),
                |(n, r)| vec![n.clone(), (*r).to_owned()],
                "members",
            );
            if let Some(index) = m.index {
                let _ = writeln!(
                    out,
                    "(membership of log entry {index}, read through {})",
                    m.asked
                );
            }
            out
        })
    }

    /// `quicmesh ping`: `count` round trips to `target`, printed as they
    /// come (or all at the end as JSON).
    async fn ping(&self, target: &NodeName, count: u32, json: bool) -> anyhow::Result<()> {
        let mut rtts_us = Vec::new();
        for _ in 0..count {
            let rtt = self.node.ping(target, self.timeout).await?;
            rtts_us.push(u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX));
            if !json {
                print_out(&format!("pong from {target} in {:.2} ms\n", ms(rtt)))?;
            }
        }
        if json {
            let pings = Pings {
                node: target.clone(),
                rtts_us,
            };
            print(json, &pings, |_| String::new())?;
        }
        Ok(())
    }

    /// A change's answer, within `wait` and the usual timeout.
    async fn changing<T>(
        &self,
        wait: Duration,
        change: impl Future<Output = Result<T, quicmesh::RpcError>>,
    ) -> anyhow::Result<T> {
        let limit = wait + self.timeout;
        let answer = tokio::time::timeout(limit, change).await.map_err(|_| {
            anyhow::anyhow!(
                "{} did not answer within {limit:?}: the change may still be made; see \
                 `quicmesh consensus members`",
                self.asked
            )
        })?;
        Ok(answer?)
    }

    /// `question`'s answer, or a timeout error.
    async fn within<T>(
        &self,
        question: impl Future<Output = Result<T, quicmesh::RpcError>>,
    ) -> anyhow::Result<T> {
        let answer = tokio::time::timeout(self.timeout, question)
            .await
            .map_err(|_| {
                anyhow::anyhow!("{} did not answer within {:?}", self.asked, self.timeout)
            })?;
        Ok(answer?)
    }
}

/// Prints `rows` as JSON or as a table of `header` with `cells` of each.
fn print_rows<T: Serialize>(
    json: bool,
    rows: &Rows<T>,
    header: &[&str],
    what: &str,
    cells: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<()> {
    print(json, rows, |rows| {
        table(header, &rows.rows, rows.total, cells, what)
    })
}

/// Prints `value` as JSON or as the table `render` makes of it.
fn print<T: Serialize>(
    json: bool,
    value: &T,
    render: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    let text = if json {
        serde_json::to_string_pretty(value)? + "\n"
    } else {
        render(value)
    };
    print_out(&text)
}

/// Starts a hidden node with the cluster's identity, listening on a free
/// port on the address `first` (or else the first seed) is reached from;
/// the seeds the flags and config name are returned, not dialled.
async fn start_hidden(
    cluster: ClusterArgs,
    first: Option<&NodeAddr>,
) -> anyhow::Result<(Node, Vec<NodeAddr>)> {
    let listen = cluster.listen;
    let mut cfg: NodeConfig = cluster.into_config()?;
    let seeds = std::mem::take(&mut cfg.seeds);
    let first = first.or_else(|| seeds.first());
    cfg.hidden = true;
    if cfg.name.is_none() {
        cfg.name = Some(admin_name(&cfg, first)?);
    }
    let ip = first
        .and_then(|s| s.name.host().trim_matches(['[', ']']).parse().ok())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    cfg.listen = Some(listen.unwrap_or_else(|| std::net::SocketAddr::new(ip, 0)));
    let node = quicmesh::Builder::from_config(cfg).start().await?;
    Ok((node, seeds))
}

/// The name of the admin node: in certificate mode the one its certificate
/// carries; in cookie mode `admin-PID@HOST`.
fn admin_name(cfg: &NodeConfig, first: Option<&NodeAddr>) -> anyhow::Result<NodeName> {
    if let IdentityConfig::Certificate { cert, .. } = &cfg.identity {
        let infos = quicmesh::identity::describe_pem(cert)
            .with_context(|| format!("reading {}", cert.display()))?;
        // The first certificate of the file is the node's own.
        let name = infos
            .first()
            .into_iter()
            .flat_map(|i| &i.sans)
            .find_map(|san| {
                san.strip_prefix("URI:")
                    .and_then(|uri| uri.strip_prefix(quicmesh::identity::URI_PREFIX))
            })
            .with_context(|| {
                format!(
                    "{} names no node: issue one with `quicmesh certs issue --name ops@HOST`",
                    cert.display()
                )
            })?;
        return Ok(name.parse()?);
    }
    let host = first.map_or("localhost", |s| s.name.host());
    Ok(format!("admin-{}@{host}", std::process::id()).parse()?)
}

/// What `quicmesh ping --json` prints.
#[derive(Serialize)]
struct Pings {
    node: NodeName,
    rtts_us: Vec<u64>,
}

/// What `quicmesh members --json` prints: the node asked and every node
/// it knows (the admin node itself left out).
#[derive(Serialize)]
struct Members {
    asked: NodeName,
    members: Vec<PeerReport>,
}

impl Members {
    fn of(report: &NodeReport, me: &NodeName) -> Self {
        let asked = report.as_peer();
        let mut members: Vec<PeerReport> = std::iter::once(asked)
            .chain(report.peers.iter().filter(|p| p.node != *me).cloned())
            .collect();
        members.sort_by(|a, b| a.node.cmp(&b.node));
        Self {
            asked: report.node.clone(),
            members,
        }
    }
}

fn status_table(r: &NodeReport) -> String {
    let visible = |state: &str| {
        r.peers
            .iter()
            .filter(|p| !p.hidden && p.state == state)
            .count()
    };
    let hidden = r.peers.iter().filter(|p| p.hidden).count();
    let mut out = String::new();
    let mut line = |k: &str, v: String| {
        let _ = writeln!(out, "{k:<12} {v}");
    };
    line("node", r.node.to_string());
    line("version", r.version.clone());
    line("incarnation", r.incarnation.to_string());
    line("listen", r.listen.clone());
    line("CA", r.ca_fingerprint.clone());
    line("hidden", if r.hidden { "yes" } else { "no" }.to_owned());
    line("connections", r.connections.to_string());
    line(
        "peers",
        format!(
            "{} up, {} connecting, {} down, {hidden} hidden (this command's among them)",
            visible("up"),
            visible("connecting"),
            visible("down")
        ),
    );
    line("names", r.names.to_string());
    line("locks", r.locks.to_string());
    line("elections", r.elections.to_string());
    if let Some(c) = &r.consensus {
        let leader = c
            .leader
            .as_ref()
            .map_or_else(|| "none known".to_owned(), ToString::to_string);
        let mut v = format!("{}, leader {leader}", c.role);
        if let (Some(term), Some(applied)) = (c.term, c.last_applied) {
            let _ = write!(v, ", term {term}, applied {applied}");
        }
        let voters: Vec<String> = c.voters.iter().map(ToString::to_string).collect();
        let _ = write!(v, " (voters {})", voters.join(" "));
        line("consensus", v);
    }
    let counters: Vec<String> = r.counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
    line("counters", counters.join(" "));
    out
}

fn members_table(m: &Members) -> String {
    table(
        &[
            "NODE",
            "STATE",
            "RTT",
            "INCARNATION",
            "ADDRESS",
            "LAST DOWN",
        ],
        &m.members,
        m.members.len(),
        |p| {
            let state = if p.node == m.asked {
                "up (asked)".to_owned()
            } else {
                p.state.clone()
            };
            vec![
                p.node.to_string(),
                state,
                p.rtt_us.map_or_else(
                    || "-".to_owned(),
                    |us| format!("{:.2} ms", us as f64 / 1000.0),
                ),
                p.incarnation
                    .map_or_else(|| "-".to_owned(), |i| i.to_string()),
                p.addrs.join(","),
                p.last_down.as_ref().map_or_else(
                    || "-".to_owned(),
                    |d| format!("{} ago: {}", ago(d.at_ms), d.reason),
                ),
            ]
        },
        "nodes",
    )
}

/// A table with a header, aligned columns, and a last line saying how many
/// rows there are (and how many were left out).
fn table<T>(
    header: &[&str],
    rows: &[T],
    total: usize,
    cells: impl Fn(&T) -> Vec<String>,
    what: &str,
) -> String {
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    lines.extend(rows.iter().map(cells));
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in &lines {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    let shown = rows.len();
    if shown < total {
        let _ = writeln!(out, "({shown} of {total} {what}; --limit shows more)");
    } else {
        let _ = writeln!(out, "({total} {what})");
    }
    out
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// How long ago `at_ms` (Unix milliseconds) was, rounded for people.
fn ago(at_ms: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let secs = now.saturating_sub(at_ms) / 1000;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        _ => format!("{}h", secs / 3600),
    }
}

/// Writes to stdout; a reader that went away early (`| head`) is no error.
fn print_out(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status report as a node sends it, from JSON (the report types
    /// cannot be built field by field outside the library).
    fn report(consensus: serde_json::Value) -> NodeReport {
        serde_json::from_value(serde_json::json!({
            "node": "a@h", "version": "0.1.0", "incarnation": 7, "listen": "127.0.0.1:4370",
            "ca_fingerprint": "ab12", "hidden": false, "connections": 2,
            "peers": [
                {"node": "b@h", "state": "up", "rtt_us": 410, "up_since_ms": 1, "incarnation": 3,
                 "hidden": false, "seed": true, "addrs": ["127.0.0.1:4371"], "last_down": null,
                 "last_dial_error": null},
                {"node": "admin-1@h", "state": "up", "rtt_us": null, "up_since_ms": 1,
                 "incarnation": 9, "hidden": true, "seed": false, "addrs": [],
                 "last_down": null, "last_dial_error": null}
            ],
            "names": 1, "locks": 0, "elections": 0, "counters": {"auth_failures": 0},
            "consensus": consensus
        }))
        .expect("a report")
    }

    #[test]
    fn status_table_counts_visible_peers_and_shows_consensus_mode() {
        let global = status_table(&report(serde_json::Value::Null));
        assert!(
            global.contains("peers        1 up, 0 connecting, 0 down, 1 hidden"),
            "{global}"
        );
        assert!(!global.contains("consensus"), "{global}");
        let consensus = status_table(&report(serde_json::json!({
            "role": "follower", "leader": "b@h", "term": 3, "last_log_index": 18,
            "last_applied": 17, "voters": ["a@h", "b@h", "c@h"]
        })));
        assert!(
            consensus.contains(
                "consensus    follower, leader b@h, term 3, applied 17 (voters a@h b@h c@h)\n"
            ),
            "{consensus}"
        );
    }
}
