//! The `Hello` exchange as data: what this node says, and what the
//! listener answers a dialler's `Hello`. No I/O; the accept and dial
//! tasks act on the answers.

use std::net::SocketAddr;

use quicmesh_wire::{Hello, NodeName, PROTOCOL_MAJOR, PROTOCOL_MINOR, PeerInfo, Refusal};

/// The `Hello` a node sends: hidden nodes share no peers, so `peers` is
/// only asked for when the node is visible.
pub(super) fn ours(
    me: &NodeName,
    incarnation: u64,
    listen: SocketAddr,
    hidden: bool,
    features: u64,
    peers: impl FnOnce() -> Vec<PeerInfo>,
) -> Hello {
    Hello {
        major: PROTOCOL_MAJOR,
        minor: PROTOCOL_MINOR,
        features,
        name: me.clone(),
        incarnation,
        listen: vec![listen],
        hidden,
        peers: if hidden { Vec::new() } else { peers() },
    }
}

/// The listener's answer to a dialler's `Hello`.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Go on to the tie-break and install.
    Accept,
    /// Refuse politely, with this reason on the control stream.
    Refuse(Refusal),
    /// Not a `Hello` this version can take: close with `ProtocolViolation`.
    Violation(String),
}

/// Judges `hello`, which arrived on a connection whose certificate names
/// `certified`, at node `me`. A peer's name is what its certificate says:
/// a `Hello` that claims another is refused.
pub(super) fn judge(hello: &Hello, certified: &NodeName, me: &NodeName, stopping: bool) -> Verdict {
    if hello.major != PROTOCOL_MAJOR {
        return Verdict::Violation(format!(
            "protocol major {} where {PROTOCOL_MAJOR} was expected",
            hello.major
        ));
    }
    if hello.name != *certified {
        return Verdict::Refuse(Refusal::NameMismatch {
            certificate: certified.clone(),
            claimed: hello.name.clone(),
        });
    }
    if certified == me {
        return Verdict::Refuse(Refusal::SelfConnect);
    }
    if stopping {
        return Verdict::Refuse(Refusal::ShuttingDown);
    }
    Verdict::Accept
}

/// Where a peer listens, as this node can reach it: an unspecified listen
/// IP (`0.0.0.0`) becomes the IP the connection came from.
pub(super) fn observed_addrs(listen: &[SocketAddr], remote: SocketAddr) -> Vec<SocketAddr> {
    listen
        .iter()
        .map(|a| {
            if a.ip().is_unspecified() {
                SocketAddr::new(remote.ip(), a.port())
            } else {
                *a
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeName {
        s.parse().unwrap()
    }

    fn hello_from(name: &str) -> Hello {
        ours(
            &n(name),
            7,
            "127.0.0.1:1".parse().unwrap(),
            false,
            0,
            Vec::new,
        )
    }

    #[test]
    fn a_hello_is_accepted_only_under_its_certificate_name() {
        let (a, b) = (n("a@h"), n("b@h"));
        assert_eq!(judge(&hello_from("a@h"), &a, &b, false), Verdict::Accept);
        assert_eq!(
            judge(&hello_from("c@h"), &a, &b, false),
            Verdict::Refuse(Refusal::NameMismatch {
                certificate: a.clone(),
                claimed: n("c@h"),
            })
        );
        assert_eq!(
            judge(&hello_from("b@h"), &b, &b, false),
            Verdict::Refuse(Refusal::SelfConnect)
        );
        assert_eq!(
            judge(&hello_from("a@h"), &a, &b, true),
            Verdict::Refuse(Refusal::ShuttingDown)
        );
    }

    #[test]
    fn another_major_version_is_a_violation_before_anything_else() {
        let mut hello = hello_from("c@h");
        hello.major = PROTOCOL_MAJOR + 1;
        let verdict = judge(&hello, &n("a@h"), &n("b@h"), true);
        assert!(matches!(verdict, Verdict::Violation(d) if d.contains("protocol major")));
    }

    #[test]
    fn hidden_nodes_share_no_peers() {
        let peers = || {
            vec![PeerInfo {
                name: n("x@h"),
                addrs: Vec::new(),
            }]
        };
        let addr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(ours(&n("a@h"), 1, addr, false, 0, peers).peers.len(), 1);
        assert!(ours(&n("a@h"), 1, addr, true, 0, peers).peers.is_empty());
    }

    #[test]
    fn unspecified_listen_ip_becomes_the_observed_one() {
        let got = observed_addrs(
            &[
                "0.0.0.0:4370".parse().unwrap(),
                "10.1.1.1:5".parse().unwrap(),
            ],
            "127.0.0.3:999".parse().unwrap(),
        );
        assert_eq!(
            got,
            vec![
                "127.0.0.3:4370".parse().unwrap(),
                "10.1.1.1:5".parse().unwrap()
            ]
        );
    }
}
