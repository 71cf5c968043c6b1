//! Bytes of request bodies buffered at once: node-wide and per
//! connection, so neither one peer nor all of them together can make the
//! node hold more than configured (`rpc.max_buffered`,
//! `rpc.max_buffered_per_peer`). A body is charged chunk by chunk as it
//! arrives and paid back when its call ends.

use std::sync::Arc;

use quinn::RecvStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Most bytes read from a stream at once.
const CHUNK: usize = 64 * 1024;

/// Why a body was not read.
pub(crate) enum BodyError {
    /// It is longer than the message limit.
    TooLong,
    /// Buffering it would pass a budget: the node or this peer holds too
    /// much already.
    OverBudget,
    /// The stream failed (the caller cancelled, the connection went).
    Read,
}

/// The bytes a body holds of each budget, paid back when dropped.
#[derive(Debug)]
pub(crate) struct Charge {
    node: Option<OwnedSemaphorePermit>,
    peer: Option<OwnedSemaphorePermit>,
}

/// Reads the rest of `recv` (at most `max` bytes), charging every chunk
/// to `node` and `peer` (semaphores whose permits are bytes).
pub(crate) async fn read_body(
    recv: &mut RecvStream,
    max: usize,
    node: &Arc<Semaphore>,
    peer: &Arc<Semaphore>,
) -> Result<(Vec<u8>, Charge), BodyError> {
    let mut body = Vec::new();
    let mut charge = Charge {
        node: None,
        peer: None,
    };
    loop {
        match recv.read_chunk(CHUNK, true).await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.bytes.len() > max {
                    return Err(BodyError::TooLong);
                }
                // A chunk is at most CHUNK bytes: it fits a u32.
                let n = u32::try_from(chunk.bytes.len()).map_err(|_| BodyError::TooLong)?;
                let (Ok(on_node), Ok(on_peer)) = (
                    node.clone().try_acquire_many_owned(n),
                    peer.clone().try_acquire_many_owned(n),
                ) else {
                    return Err(BodyError::OverBudget);
                };
                add(&mut charge.node, on_node);
                add(&mut charge.peer, on_peer);
                body.extend_from_slice(&chunk.bytes);
            }
            Ok(None) => return Ok((body, charge)),
            Err(_) => return Err(BodyError::Read),
        }
    }
}

fn add(held: &mut Option<OwnedSemaphorePermit>, more: OwnedSemaphorePermit) {
    match held {
        Some(held) => held.merge(more),
        None => *held = Some(more),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_charge_pays_back_what_it_holds() {
        let node = Arc::new(Semaphore::new(100));
        let mut charge = Charge {
            node: None,
            peer: None,
        };
        add(
            &mut charge.node,
            node.clone().try_acquire_many_owned(30).unwrap(),
        );
        add(
            &mut charge.node,
            node.clone().try_acquire_many_owned(50).unwrap(),
        );
        assert_eq!(node.available_permits(), 20);
        assert!(node.clone().try_acquire_many_owned(21).is_err());
        drop(charge);
        assert_eq!(node.available_permits(), 100);
    }
}
