//! Bytes of request bodies buffered at once: node-wide and per
//! connection, so neither one peer nor all of them together can make the
//! node hold more than configured (`rpc.max_buffered`,
//! `rpc.max_buffered_per_peer`). A body is charged chunk by chunk as it
//! arrives and paid back when its call ends.

use std::sync::Arc;

use quicmesh_mesh::io::Chunks;
use quinn::RecvStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
/// to `node` and `peer` (semaphores whose permits are bytes) before it
/// is kept.
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
    let mut chunks = Chunks::default();
    loop {
        match chunks.read(recv).await {
            Ok(true) => {
                let len = chunks.len();
                if body.len() + len > max {
                    return Err(BodyError::TooLong);
                }
                // A read holds at most the stream's receive window (quinn's
                // default 1.25 MB): it fits a u32.
                let n = u32::try_from(len).map_err(|_| BodyError::TooLong)?;
                let (Ok(on_node), Ok(on_peer)) = (
                    node.clone().try_acquire_many_owned(n),
                    peer.clone().try_acquire_many_owned(n),
                ) else {
                    return Err(BodyError::OverBudget);
                };
                add(&mut charge.node, on_node);
                add(&mut charge.peer, on_peer);
                chunks.append_to(&mut body);
            }
            Ok(false) => return Ok((body, charge)),
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
