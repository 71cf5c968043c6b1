//! Fencing tokens and election terms.

use std::fmt;

use quicmesh_wire::NodeName;
use quicmesh_wire::coord::Hlc;
use serde::{Deserialize, Serialize};

/// A fencing token (of a [`crate::LockGuard`]) or an election term (of a
/// [`crate::Leadership`]): the holder's hybrid-logical-clock reading when
/// it was granted, with its node as tie-break.
///
/// Tokens are unique cluster-wide and compare in the order of the grants:
/// a grant made after another was released, or after its holder's node was
/// declared down, has a larger token, on either side of a partition and
/// after a restart of the whole cluster (see the README for exactly what
/// holds). Give it to whatever the lock protects, which keeps the largest
/// token it has seen and refuses smaller ones. It is one number
/// ([`Token::get`]): the clock reading ([`Hlc::packed`]) in the high 64
/// bits, a 64-bit hash of the node name in the low 64.
///
/// In consensus mode (`coordination = "consensus"`) a token is instead
/// the Raft log index of the granting entry ([`Token::from_log_index`],
/// [`Token::log_index`]): the high 64 bits are zero, and every later grant
/// of anything, by any node, has a larger one. Tokens of the two modes
/// are not to be compared with each other; a cluster runs in one mode.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Token(u128);

/// FNV-1a: the same on every platform and in every version.
fn name_hash(name: &NodeName) -> u64 {
    name.as_str().bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl Token {
    /// No grant: smaller than every token.
    pub const NONE: Self = Self(0);

    /// The token of a grant to `node` at clock reading `at`.
    pub fn new(at: Hlc, node: &NodeName) -> Self {
        Self((u128::from(at.packed()) << 64) | u128::from(name_hash(node)))
    }

    /// The token as it travels and as a fenced resource stores it.
    pub fn get(self) -> u128 {
        self.0
    }

    /// The token [`Token::get`] gave.
    pub fn from_u128(value: u128) -> Self {
        Self(value)
    }

    /// The clock reading of the grant, in global mode. A consensus-mode
    /// token carries no clock reading: for one, this is the zero reading
    /// (`millis` 0); read [`Token::log_index`] instead.
    pub fn time(self) -> Hlc {
        Hlc::unpacked((self.0 >> 64) as u64)
    }

    /// The token of a consensus-mode grant: the Raft log index of the
    /// entry that made it.
    pub fn from_log_index(index: u64) -> Self {
        Self(u128::from(index))
    }

    /// The Raft log index of a consensus-mode token; `None` for a
    /// global-mode token (whose high 64 bits, the clock reading, are never
    /// zero) other than [`Token::NONE`], which is index 0.
    pub fn log_index(self) -> Option<u64> {
        u64::try_from(self.0).ok()
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_order_by_time_then_node_and_differ_between_nodes() {
        let (a, b): (NodeName, NodeName) = ("a@h".parse().unwrap(), "b@h".parse().unwrap());
        let t = Hlc {
            millis: 1_700_000_000_000,
            counter: 1,
        };
        let later = Hlc {
            millis: t.millis,
            counter: 2,
        };
        assert_ne!(Token::new(t, &a), Token::new(t, &b), "same time, two nodes");
        assert!(Token::new(later, &a) > Token::new(t, &b));
        assert!(Token::new(later, &b) > Token::new(t, &a));
        assert_eq!(Token::new(t, &a).time(), t);
        assert!(
            Token::NONE
                < Token::new(
                    Hlc {
                        millis: 0,
                        counter: 1
                    },
                    &a
                )
        );
        let token = Token::new(t, &a);
        assert_eq!(Token::from_u128(token.get()), token);
        assert_eq!(token.to_string(), token.get().to_string());
        assert_eq!(token.log_index(), None, "a clock reading is never zero");
        let index = Token::from_log_index(42);
        assert_eq!((index.log_index(), index.get()), (Some(42), 42));
        assert!(Token::from_log_index(43) > index && index > Token::NONE);
        assert_eq!(index.time().millis, 0);
        // The hash is fixed: a change would reorder tokens across versions.
        assert_eq!(name_hash(&a), 0xe6ac_9f19_04e0_14a4_u64);
    }
}
