//! The bulk path: large calls on connections of their own, driven by
//! threads that yield the CPU to everything else.
//!
//! A small call that shares a connection with a large one waits behind
//! it twice: its packets queue behind the large call's in the UDP socket
//! buffers, and the one task that drives the connection (packet crypto,
//! stream reassembly) works through the large call's packets first. With
//! both cores busy moving bulk data it also waits for a core. Send
//! priorities help with none of that: they order data not yet packed
//! into packets.
//!
//! So each node binds a second endpoint (its own UDP socket, on an
//! ephemeral port of the listening address) whose driver, connections
//! and served streams run on a runtime of their own, [`runtime`], whose
//! threads run at a lower CPU priority (nice 10 on Linux). Peers learn
//! the port from [`Control::BulkPath`](quicmesh_wire::Control) on the
//! control stream. A caller asks [`Mesh::bulk`](crate::Mesh::bulk) for
//! the bulk connection to a peer: the first ask dials it in the
//! background (the call goes on the main connection meanwhile).
//!
//! A bulk connection only follows a link: its certificate is verified as
//! the main connection's is, a node with no main connection to this one
//! is refused with [`CloseCode::NotAPeer`], and it is closed when the
//! main connection ends. A peer holds at most one bulk connection here
//! at a time (a new one replaces the old), and at most
//! [`MAX_BULK_HANDSHAKES`] bulk handshakes are in progress at once.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use quicmesh_identity::{Identity, NodeName};
use quicmesh_wire::CloseCode;
use tokio::runtime::{Handle, Runtime};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::error::BindError;
use crate::io::within;
use crate::peer::Peer;
use crate::status::Counters;
use crate::transport;

/// Bulk handshakes in progress at once on a node's bulk endpoint.
pub const MAX_BULK_HANDSHAKES: usize = 16;
/// How much nicer (Linux) the bulk runtime's threads are than the thread
/// that started them: 10 steps, so a thread of the process's own
/// priority that wants the CPU gets about nine tenths of it.
pub const BULK_NICE: i32 = 10;
/// The largest nice value.
const NICEST: i32 = 19;
/// Threads of the bulk runtime: one. A large transfer is a chain of
/// tasks waking each other (the endpoint's driver, the connection's, the
/// stream's reader or writer); with two workers each wake-up could rouse
/// the other, parked, thread to steal it, and a 1 MiB echo took 3 to 4
/// times the thread switches of raw quinn and ran at 0.64–0.68 of its
/// speed; on one thread, 0.84–0.93 (and about 1.0 once bodies were
/// copied less). Bulk data also never takes more than one core from small
/// calls.
const BULK_THREADS: usize = 1;

/// The process's bulk runtime, shared by every node of the process and
/// never dropped. Its threads are named `quicmesh-bulk` and, on Linux,
/// run [`BULK_NICE`] steps nicer than the thread that first bound a bulk
/// endpoint.
pub(crate) fn runtime() -> Result<&'static Handle, String> {
    static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let nice = (own_nice() + BULK_NICE).min(NICEST);
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(BULK_THREADS)
                .thread_name("quicmesh-bulk")
                .enable_all()
                .on_thread_start(move || set_nice(nice))
                .build()
                .map_err(|e| format!("could not start the bulk path's threads: {e}"))
        })
        .as_ref()
        .map(Runtime::handle)
        .map_err(Clone::clone)
}

/// The calling thread's nice value.
#[cfg(target_os = "linux")]
fn own_nice() -> i32 {
    rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap_or(0)
}

/// Sets the calling thread's nice value.
#[cfg(target_os = "linux")]
fn set_nice(nice: i32) {
    let me = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(me), nice) {
        warn!("could not lower the priority of a bulk thread: {e}");
    }
}

/// Other systems: the bulk path still has its own socket and driver, at
/// the process's priority.
#[cfg(not(target_os = "linux"))]
fn own_nice() -> i32 {
    0
}

#[cfg(not(target_os = "linux"))]
fn set_nice(_: i32) {}

/// A node's bulk endpoint.
#[derive(Debug)]
pub(crate) struct BulkEndpoint {
    endpoint: quinn::Endpoint,
    port: u16,
    handshakes: Arc<Semaphore>,
    handle: &'static Handle,
}

impl BulkEndpoint {
    /// Binds the bulk endpoint on an ephemeral port of `ip`, on the bulk
    /// runtime (so quinn drives it and its connections there).
    pub(crate) fn bind(
        listen: SocketAddr,
        identity: &Identity,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<Self, BindError> {
        let addr = SocketAddr::new(listen.ip(), 0);
        let handle = runtime().map_err(|e| BindError::Io {
            addr,
            source: std::io::Error::other(e),
        })?;
        let _in_bulk = handle.enter();
        let endpoint = transport::bind(addr, identity, transport)?;
        let port = endpoint
            .local_addr()
            .map_err(|source| BindError::Io { addr, source })?
            .port();
        Ok(Self {
            endpoint,
            port,
            handshakes: Arc::new(Semaphore::new(MAX_BULK_HANDSHAKES)),
            handle,
        })
    }

    /// The bulk runtime, where the endpoint's tasks run.
    pub(crate) fn handle(&self) -> &'static Handle {
        self.handle
    }

    /// The UDP port peers dial.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Closes the endpoint and every bulk connection on it.
    pub(crate) fn close(&self) {
        self.endpoint.close(
            quinn::VarInt::from_u32(CloseCode::Shutdown.code()),
            b"node shutting down",
        );
    }

    /// Its open connections, dialled and accepted.
    pub(crate) fn open_connections(&self) -> usize {
        self.endpoint.open_connections()
    }

    /// The endpoint, to accept on.
    pub(crate) fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    /// A permit for one more bulk handshake, if fewer than
    /// [`MAX_BULK_HANDSHAKES`] are in progress.
    pub(crate) fn handshake_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.handshakes.clone().try_acquire_owned().ok()
    }

    /// Dials `main`'s peer's bulk endpoint at `port` on the IP address of
    /// the main connection, insisting on its name.
    pub(crate) async fn dial(
        &self,
        identity: &Identity,
        transport: &Arc<quinn::TransportConfig>,
        main: &Peer,
        port: u16,
        patience: Duration,
    ) -> Result<quinn::Connection, String> {
        let addr = SocketAddr::new(main.connection().remote_address().ip(), port);
        let (connecting, _) =
            transport::connect(&self.endpoint, identity, transport, main.name(), addr)?;
        match within(patience, connecting).await {
            Some(Ok(conn)) => Ok(conn),
            Some(Err(e)) => Err(e.to_string()),
            None => Err(format!("no handshake within {patience:?}")),
        }
    }
}

/// Counts and logs (at debug level) a refused incoming bulk connection.
pub(crate) fn refused(counters: &Counters, from: SocketAddr, name: Option<&NodeName>, why: &str) {
    counters.bulk_refused.fetch_add(1, Ordering::Relaxed);
    match name {
        Some(name) => debug!(peer = %name, %from, "refused a bulk connection: {why}"),
        None => debug!(%from, "refused a bulk connection: {why}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn bulk_threads_run_at_a_lower_priority() {
        let handle = runtime().expect("bulk runtime");
        let nice = handle.block_on(async {
            tokio::spawn(async {
                rustix::process::getpriority_process(Some(rustix::thread::gettid()))
            })
            .await
        });
        let nice = nice.expect("task").expect("getpriority");
        // Nicer than this thread by BULK_NICE (or as nice as can be).
        assert_eq!(nice, (own_nice() + BULK_NICE).min(NICEST));
    }
}
