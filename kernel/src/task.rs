//! Small helpers for spawned tasks.

/// Aborts a spawned task when dropped: a helper task (a read-ahead, say) ends with the one
/// that owns it, however that one ends.
#[derive(Debug)]
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
