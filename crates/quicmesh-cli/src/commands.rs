//! `quicmesh node --commands`: a node driven line by line from stdin, for
//! scripts and test drivers that want to lock, register, campaign and
//! read in either coordination mode and see each outcome.
//!
//! Each line on stdin is one JSON command; each answer is one line on
//! stdout, `reply ` and a JSON [`Reply`] with the command's `id`.
//! Commands run concurrently, so replies may come out of order.
//!
//! ```text
//! {"id":1,"op":"lock","key":"db","timeout_ms":2000}
//! reply {"id":1,"outcome":"granted","token":17,"session":3}
//! {"id":2,"op":"release","key":"db","token":17}
//! reply {"id":2,"outcome":"released","session":3}
//! {"id":3,"op":"whereis","key":"billing"}
//! reply {"id":3,"outcome":"value","owner":"app@10.0.0.2","session":3}
//! ```
//!
//! | op | fields | outcomes |
//! |---|---|---|
//! | `lock`, `campaign` | `key`, `timeout_ms` | `granted` (`token`), `held` (`owner`), `error` |
//! | `release`, `resign` | `key`, `token` | `released`, `not_held`, `error` |
//! | `register` | `key` | `registered`, `taken` (`owner`), `error` |
//! | `unregister` | `key` | `released`, `not_held`, `error` |
//! | `whereis`, `leader` | `key` | `value` (`owner`, `token`; both absent when free), `error` |
//! | `status` | | `value` (`role`, `owner`: the Raft leader) |
//!
//! An `error` names its kind (`no_quorum`, `session_expired`, `stopped`,
//! `refused`, `invalid`, `other`) and carries the message. `session` is
//! the node's consensus session the command ran in (absent in global
//! mode, and when the session changed while it ran). In consensus mode reads are linearizable; in global mode they
//! are this node's view.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quicmesh::{
    Consensus, ConsensusError, ConsensusGuard, Leadership, LockError, LockGuard, LockOptions, Node,
    RegistryError,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, BufReader};

/// The longest stdin line read: a longer one is refused, not buffered.
const MAX_LINE: usize = 4096;

/// One command read from stdin.
#[derive(Debug, Deserialize)]
struct Request {
    /// Echoed in the reply.
    id: u64,
    op: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    token: Option<u128>,
}

/// The answer to one command.
#[derive(Debug, Default, Serialize)]
struct Reply {
    id: u64,
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<u128>,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<u64>,
}

impl Reply {
    fn outcome(outcome: &'static str) -> Self {
        Self {
            outcome,
            ..Self::default()
        }
    }

    fn granted(token: u128) -> Self {
        Self {
            token: Some(token),
            ..Self::outcome("granted")
        }
    }

    fn owner(outcome: &'static str, owner: impl ToString) -> Self {
        Self {
            owner: Some(owner.to_string()),
            ..Self::outcome(outcome)
        }
    }

    fn error(kind: &'static str, error: impl ToString) -> Self {
        Self {
            kind: Some(kind),
            error: Some(error.to_string()),
            ..Self::outcome("error")
        }
    }
}

/// A lock or leadership this node holds, by key and token.
enum Held {
    Consensus(ConsensusGuard),
    Lock(LockGuard),
    Leadership(Leadership),
}

type Holdings = Arc<Mutex<HashMap<(String, u128), Held>>>;

/// Reads commands from stdin until it closes, each answered in a task of
/// its own.
pub(crate) async fn serve(node: Node) {
    let held: Holdings = Arc::default();
    let mut lines = BufReader::new(tokio::io::stdin());
    let mut line = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        line.clear();
        match read_line(&mut lines, &mut line).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("commands: {e}");
                continue;
            }
        }
        let request: Request = match serde_json::from_slice(&line) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("commands: not a command ({e})");
                continue;
            }
        };
        let (node, held) = (node.clone(), held.clone());
        tasks.spawn(async move {
            let id = request.id;
            let session = || node.consensus().and_then(Consensus::session_id);
            let before = session();
            let mut reply = run(&node, &held, request).await;
            reply.id = id;
            // The session the command used, when that is certain: the same
            // before and after, or the one it opened.
            let after = session();
            reply.session = after.filter(|_| before.is_none() || before == after);
            match serde_json::to_string(&reply) {
                Ok(json) => crate::say::say(format_args!("reply {json}")),
                Err(e) => tracing::warn!("commands: reply {id}: {e}"),
            }
        });
        // Finished tasks are dropped as they end; the rest run on.
        while tasks.try_join_next().is_some() {}
    }
    // Held locks and leaderships stay held until the node stops.
    while tasks.join_next().await.is_some() {}
    std::future::pending::<()>().await;
}

/// One line, at most [`MAX_LINE`] bytes (a longer one is an error and is
/// skipped whole).
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
) -> std::io::Result<usize> {
    let mut too_long = false;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(line.len());
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(at) => (&buf[..=at], true),
            None => (buf, false),
        };
        let used = chunk.len();
        if !too_long && line.len() + used <= MAX_LINE {
            line.extend_from_slice(chunk);
        } else {
            too_long = true;
            line.clear();
        }
        reader.consume(used);
        if done {
            if too_long {
                return Err(std::io::Error::other(format!(
                    "a line over {MAX_LINE} bytes, skipped"
                )));
            }
            return Ok(line.len());
        }
    }
}

async fn run(node: &Node, held: &Holdings, request: Request) -> Reply {
    let key = request.key;
    let timeout = Duration::from_millis(request.timeout_ms.unwrap_or(5000));
    match (node.consensus(), request.op.as_str()) {
        (_, "status") => status(node),
        (Some(c), "lock" | "campaign") => {
            let taken = if request.op == "lock" {
                c.lock(&key, timeout).await
            } else {
                c.campaign(&key, timeout).await
            };
            match taken {
                Ok(guard) => {
                    let token = u128::from(guard.token());
                    hold(held, key, token, Held::Consensus(guard));
                    Reply::granted(token)
                }
                Err(e) => consensus_error(e),
            }
        }
        (Some(_), "release" | "resign") => match unhold(held, key, request.token) {
            Some(Held::Consensus(guard)) => match guard.release().await {
                Ok(()) => Reply::outcome("released"),
                Err(e) => consensus_error(e),
            },
            _ => Reply::outcome("not_held"),
        },
        (Some(c), "register") => match c.register(&key).await {
            Ok(()) => Reply::outcome("registered"),
            Err(e) => consensus_error(e),
        },
        (Some(c), "unregister") => match c.unregister(&key).await {
            Ok(()) => Reply::outcome("released"),
            Err(e) => consensus_error(e),
        },
        (Some(c), "whereis") => match c.whereis(&key).await {
            Ok(owner) => value(owner.map(|o| o.node), None),
            Err(e) => consensus_error(e),
        },
        (Some(c), "leader") => match c.leader(&key).await {
            Ok(leader) => {
                let (owner, term) = leader.map(|l| (l.node, u128::from(l.term))).unzip();
                value(owner, term)
            }
            Err(e) => consensus_error(e),
        },
        (None, op) => global(node, held, op, key, request.token, timeout).await,
        (Some(_), op) => Reply::error("invalid", format!("no command {op:?}")),
    }
}

/// The same commands in global mode.
async fn global(
    node: &Node,
    held: &Holdings,
    op: &str,
    key: String,
    token: Option<u128>,
    timeout: Duration,
) -> Reply {
    match op {
        "lock" => match node
            .lock_with(&key, &LockOptions::default().timeout(timeout))
            .await
        {
            Ok(guard) => {
                let token = guard.token().get();
                hold(held, key, token, Held::Lock(guard));
                Reply::granted(token)
            }
            Err(e) => lock_error(e),
        },
        "campaign" => match tokio::time::timeout(timeout, node.election(&key).campaign()).await {
            Ok(Ok(leadership)) => {
                let token = leadership.term().get();
                hold(held, key, token, Held::Leadership(leadership));
                Reply::granted(token)
            }
            Ok(Err(e)) => lock_error(e),
            Err(_) => match node.election(&key).leader().leader {
                Some(owner) => Reply::owner("held", owner),
                None => Reply::error("timeout", "no leadership within the timeout"),
            },
        },
        "release" | "resign" => match unhold(held, key, token) {
            Some(Held::Lock(guard)) => {
                guard.release().await;
                Reply::outcome("released")
            }
            Some(Held::Leadership(leadership)) => {
                leadership.resign().await;
                Reply::outcome("released")
            }
            _ => Reply::outcome("not_held"),
        },
        "register" => match node.registry().register(&key, &key).await {
            Ok(_) => Reply::outcome("registered"),
            Err(RegistryError::AlreadyRegistered { owner, .. }) => Reply::owner("taken", owner),
            Err(e) => Reply::error("other", e),
        },
        "unregister" => match node.registry().unregister(&key).await {
            true => Reply::outcome("released"),
            false => Reply::outcome("not_held"),
        },
        "whereis" => value(node.registry().whereis(&key).map(|r| r.owner), None),
        "leader" => {
            let change = node.election(&key).leader();
            let term = change.leader.as_ref().map(|_| change.term.get());
            value(change.leader, term)
        }
        op => Reply::error("invalid", format!("no command {op:?}")),
    }
}

fn status(node: &Node) -> Reply {
    match node.consensus() {
        Some(c) => {
            let status = c.status();
            Reply {
                role: Some(status.role),
                owner: status.leader.map(|l| l.to_string()),
                ..Reply::outcome("value")
            }
        }
        None => Reply {
            role: Some("global"),
            ..Reply::outcome("value")
        },
    }
}

fn value(owner: Option<impl ToString>, token: Option<u128>) -> Reply {
    Reply {
        owner: owner.map(|o| o.to_string()),
        token,
        ..Reply::outcome("value")
    }
}

fn hold(held: &Holdings, key: String, token: u128, what: Held) {
    locked(held).insert((key, token), what);
}

/// The holding of `key` with `token`, or with any token if none is given.
fn unhold(held: &Holdings, key: String, token: Option<u128>) -> Option<Held> {
    let mut held = locked(held);
    let at = match token {
        Some(token) => (key, token),
        None => held.keys().find(|(k, _)| *k == key)?.clone(),
    };
    held.remove(&at)
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn consensus_error(e: ConsensusError) -> Reply {
    let kind = match &e {
        ConsensusError::Timeout { owner, .. } => return Reply::owner("held", owner),
        ConsensusError::Taken { owner } => return Reply::owner("taken", owner),
        ConsensusError::NotHeld => return Reply::outcome("not_held"),
        ConsensusError::NoQuorum { .. } => "no_quorum",
        ConsensusError::SessionExpired => "session_expired",
        ConsensusError::Stopped(_) => "stopped",
        ConsensusError::Refused { .. } => "refused",
        ConsensusError::Invalid | ConsensusError::Limit => "invalid",
        _ => "other",
    };
    Reply::error(kind, e)
}

fn lock_error(e: LockError) -> Reply {
    match e {
        LockError::Timeout { .. } => Reply::error("timeout", e),
        e => Reply::error("other", e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_line_over_the_limit_is_skipped_whole_and_the_next_is_read() {
        let long = "x".repeat(MAX_LINE + 10);
        let input = format!("{{\"id\":1}}\n{long}\n{{\"id\":2}}\n");
        let mut reader = input.as_bytes();
        let mut line = Vec::new();
        read_line(&mut reader, &mut line).await.expect("first line");
        assert_eq!(line, b"{\"id\":1}\n");
        line.clear();
        let e = read_line(&mut reader, &mut line)
            .await
            .expect_err("too long");
        assert!(e.to_string().contains("over 4096 bytes"), "{e}");
        line.clear();
        read_line(&mut reader, &mut line)
            .await
            .expect("the line after");
        assert_eq!(line, b"{\"id\":2}\n");
        line.clear();
        assert_eq!(read_line(&mut reader, &mut line).await.expect("eof"), 0);
    }

    #[test]
    fn a_command_that_is_not_json_or_lacks_an_id_is_no_command() {
        assert!(serde_json::from_slice::<Request>(b"lock db").is_err());
        assert!(serde_json::from_slice::<Request>(b"{\"op\":\"lock\"}").is_err());
        let r: Request = serde_json::from_slice(b"{\"id\":3,\"op\":\"whereis\",\"key\":\"a\"}")
            .expect("a command");
        assert_eq!((r.id, r.op.as_str(), r.key.as_str()), (3, "whereis", "a"));
    }
}
