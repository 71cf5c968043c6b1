//! Node names (`name@host`) and dial addresses (`name@host:port`).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The port a node listens on when an address names none (Erlang's EPMD
/// port is 4369; quicmesh takes the next one).
pub const DEFAULT_PORT: u16 = 4370;

/// Longest accepted name part (before `@`), in bytes.
const MAX_NAME_LEN: usize = 64;
/// Longest accepted host part (after `@`), in bytes: a DNS name's limit.
const MAX_HOST_LEN: usize = 253;

/// Why a string is not a valid node name or address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// There is no `@` between name and host.
    #[error("node name {0:?} has no '@': write it as name@host, e.g. app1@127.0.0.1")]
    MissingAt(String),
    /// The part before `@` is empty.
    #[error("node name {0:?} has an empty name before '@'")]
    EmptyName(String),
    /// The part after `@` is empty.
    #[error("node name {0:?} has an empty host after '@'")]
    EmptyHost(String),
    /// A part is longer than allowed.
    #[error("node name {input:?}: the {part} part is {len} bytes long, at most {max} are allowed")]
    TooLong {
        /// The rejected input.
        input: String,
        /// Which part: `name` or `host`.
        part: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A character that is not allowed in that part.
    #[error(
        "node name {input:?}: {ch:?} is not allowed in the {part} part \
         (names use A-Z a-z 0-9 _ - . and start with a letter or digit; \
         hosts are DNS names, IPv4 addresses or [IPv6] addresses)"
    )]
    BadChar {
        /// The rejected input.
        input: String,
        /// Which part: `name` or `host`.
        part: &'static str,
        /// The offending character.
        ch: char,
    },
    /// The port after the host is not a number in 1..=65535 (0 is allowed
    /// only where a listen address is meant).
    #[error("address {0:?} has an invalid port: write name@host:port with a port in 0..=65535")]
    BadPort(String),
}

/// A validated node name, `name@host`, e.g. `app1@127.0.0.1`.
///
/// The name is what a node's certificate carries (URI SAN
/// `quicmesh:node/<name@host>`), so two nodes with the same name are the
/// same node to the cluster. It is ASCII, at most 64 bytes before the `@`
/// and 253 after it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeName(Arc<str>);

impl NodeName {
    /// Validates and wraps `s`.
    pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
        let s = s.into();
        validate_name(&s)?;
        Ok(Self(s.into()))
    }

    /// The whole name, `name@host`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before `@`.
    pub fn short(&self) -> &str {
        self.0.split_once('@').map_or(self.as_str(), |(n, _)| n)
    }

    /// The part after `@`, with IPv6 brackets as written.
    pub fn host(&self) -> &str {
        self.0.split_once('@').map_or("", |(_, h)| h)
    }
}

fn validate_name(s: &str) -> Result<(), NameError> {
    let (name, host) = s
        .split_once('@')
        .ok_or_else(|| NameError::MissingAt(s.to_owned()))?;
    if name.is_empty() {
        return Err(NameError::EmptyName(s.to_owned()));
    }
    if host.is_empty() {
        return Err(NameError::EmptyHost(s.to_owned()));
    }
    let too_long = |part, len, max| NameError::TooLong {
        input: s.to_owned(),
        part,
        len,
        max,
    };
    if name.len() > MAX_NAME_LEN {
        return Err(too_long("name", name.len(), MAX_NAME_LEN));
    }
    if host.len() > MAX_HOST_LEN {
        return Err(too_long("host", host.len(), MAX_HOST_LEN));
    }
    let bad = |part, ch| NameError::BadChar {
        input: s.to_owned(),
        part,
        ch,
    };
    for (i, ch) in name.chars().enumerate() {
        let ok = ch.is_ascii_alphanumeric() || (i > 0 && matches!(ch, '_' | '-' | '.'));
        if !ok {
            return Err(bad("name", ch));
        }
    }
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or_else(|| bad("host", '['))?;
        if inner.parse::<std::net::Ipv6Addr>().is_err() {
            let ch = inner
                .chars()
                .find(|c| !(c.is_ascii_hexdigit() || *c == ':' || *c == '.'))
                .unwrap_or(']');
            return Err(bad("host", ch));
        }
        return Ok(());
    }
    for ch in host.chars() {
        if !(ch.is_ascii_alphanumeric() || ch == '-' || ch == '.') {
            return Err(bad("host", ch));
        }
    }
    Ok(())
}

impl FromStr for NodeName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for NodeName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<NodeName> for String {
    fn from(n: NodeName) -> Self {
        n.0.to_string()
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeName({})", self.0)
    }
}

/// A node to dial: `name@host:port`; without a port, [`DEFAULT_PORT`].
///
/// The host of the name is also where the node is reached (resolved with
/// the system resolver if it is not an IP address).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeAddr {
    /// The node's name.
    pub name: NodeName,
    /// The UDP port it listens on.
    pub port: u16,
}

impl NodeAddr {
    /// An address for `name` at `port`.
    pub fn new(name: NodeName, port: u16) -> Self {
        Self { name, port }
    }

    /// `host:port`, suitable for a resolver (IPv6 hosts keep their
    /// brackets).
    pub fn host_port(&self) -> String {
        format!("{}:{}", self.name.host(), self.port)
    }
}

impl FromStr for NodeAddr {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (_, host) = s
            .split_once('@')
            .ok_or_else(|| NameError::MissingAt(s.to_owned()))?;
        // A port follows the last ':' unless the host is a bare bracketed IPv6.
        let port_sep = if host.starts_with('[') {
            host.rfind("]:").map(|i| i + 1)
        } else {
            host.rfind(':')
        };
        let Some(sep) = port_sep else {
            return Ok(Self::new(NodeName::new(s)?, DEFAULT_PORT));
        };
        let split = s.len() - host.len() + sep;
        let port = s[split + 1..]
            .parse::<u16>()
            .map_err(|_| NameError::BadPort(s.to_owned()))?;
        Ok(Self::new(NodeName::new(&s[..split])?, port))
    }
}

impl TryFrom<String> for NodeAddr {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<NodeAddr> for String {
    fn from(a: NodeAddr) -> Self {
        a.to_string()
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.port)
    }
}

impl fmt::Debug for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeAddr({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names() {
        for s in [
            "a@b",
            "app1@127.0.0.1",
            "my_app-2.x@host.example",
            "a@[::1]",
        ] {
            let n: NodeName = s.parse().unwrap();
            assert_eq!(n.as_str(), s);
        }
        let n: NodeName = "app1@host1".parse().unwrap();
        assert_eq!((n.short(), n.host()), ("app1", "host1"));
    }

    #[test]
    fn invalid_names_say_why() {
        assert!(matches!(
            "app1".parse::<NodeName>(),
            Err(NameError::MissingAt(_))
        ));
        assert!(matches!(
            "@h".parse::<NodeName>(),
            Err(NameError::EmptyName(_))
        ));
        assert!(matches!(
            "a@".parse::<NodeName>(),
            Err(NameError::EmptyHost(_))
        ));
        assert!(matches!(
            "-a@h".parse::<NodeName>(),
            Err(NameError::BadChar {
                ch: '-',
                part: "name",
                ..
            })
        ));
        assert!(matches!(
            "a@h/x".parse::<NodeName>(),
            Err(NameError::BadChar {
                ch: '/',
                part: "host",
                ..
            })
        ));
        assert!(matches!(
            "ä@h".parse::<NodeName>(),
            Err(NameError::BadChar { ch: 'ä', .. })
        ));
        assert!(matches!(
            "a@b@c".parse::<NodeName>(),
            Err(NameError::BadChar { ch: '@', .. })
        ));
        let long = format!("{}@h", "a".repeat(65));
        assert!(matches!(
            long.parse::<NodeName>(),
            Err(NameError::TooLong {
                len: 65,
                max: 64,
                ..
            })
        ));
        let msg = "app1".parse::<NodeName>().unwrap_err().to_string();
        assert!(msg.contains("name@host"), "{msg}");
    }

    #[test]
    fn addresses_parse_with_and_without_port() {
        let a: NodeAddr = "app1@127.0.0.1:4371".parse().unwrap();
        assert_eq!((a.name.as_str(), a.port), ("app1@127.0.0.1", 4371));
        let a: NodeAddr = "app1@host".parse().unwrap();
        assert_eq!(a.port, DEFAULT_PORT);
        assert_eq!(a.to_string(), "app1@host:4370");
        let a: NodeAddr = "b@[::1]:9".parse().unwrap();
        assert_eq!((a.name.as_str(), a.port), ("b@[::1]", 9));
        assert_eq!(a.host_port(), "[::1]:9");
        let a: NodeAddr = "b@[::1]".parse().unwrap();
        assert_eq!(a.port, DEFAULT_PORT);
        assert!(matches!(
            "a@h:x".parse::<NodeAddr>(),
            Err(NameError::BadPort(_))
        ));
        assert!(matches!(
            "a@h:70000".parse::<NodeAddr>(),
            Err(NameError::BadPort(_))
        ));
    }

    #[test]
    fn serde_validates() {
        let bytes = postcard::to_allocvec(&"bad name".to_owned()).unwrap();
        assert!(postcard::from_bytes::<NodeName>(&bytes).is_err());
        let bytes = postcard::to_allocvec(&"a@h".to_owned()).unwrap();
        assert_eq!(
            postcard::from_bytes::<NodeName>(&bytes).unwrap().as_str(),
            "a@h"
        );
    }
}
