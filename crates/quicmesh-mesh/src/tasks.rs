//! The node's tasks: one tracker to wait on and one token to cancel them.

use std::future::Future;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Spawns tasks that [`Mesh::shutdown`](crate::Mesh::shutdown) cancels
/// and waits for. Cheap to clone; holds no reference to the node itself,
/// so a handler may keep one without keeping the node alive.
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    token: CancellationToken,
}

impl Tasks {
    /// Runs `task` on the runtime, tracked: shutdown waits for it (under
    /// its deadline), so it should end when [`Tasks::cancelled`] resolves
    /// or when what it serves goes away.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Runs `task` on the runtime of `handle`, tracked as
    /// [`Tasks::spawn`]'s are.
    pub(crate) fn spawn_on<F>(
        &self,
        task: F,
        handle: &tokio::runtime::Handle,
    ) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn_on(task, handle)
    }

    /// Resolves once the node is stopping.
    pub async fn cancelled(&self) {
        self.token.cancelled().await;
    }

    /// Whether the node is stopping.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Tells every task to stop.
    pub(crate) fn cancel(&self) {
        self.token.cancel();
    }

    /// Waits until every task ended (no new ones are accepted after).
    pub(crate) async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}
