//! Checkpoints of projections that other processes build (the Kafka projectors), watched by
//! polling the read store: one poll loop per projection, shared by every read waiting on it
//! (`?min_position=`), running only while some read waits. So the poll can be frequent (a
//! read sees the checkpoint within [`POLL_EVERY`]) without each waiting read adding queries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kernel::ports::ReadStore;
use tokio::sync::watch;

/// How often a watched checkpoint is read while reads wait on it.
pub const POLL_EVERY: Duration = Duration::from_millis(2);

/// The poll loops running, by projection.
#[derive(Clone, Default)]
pub struct PolledCheckpoints {
    loops: Arc<Mutex<HashMap<String, watch::Sender<u64>>>>,
}

impl std::fmt::Debug for PolledCheckpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolledCheckpoints").finish_non_exhaustive()
    }
}

impl PolledCheckpoints {
    /// Watches `projection`'s checkpoint, starting its poll loop if none runs. The loop stops
    /// once every receiver is dropped.
    pub fn subscribe(&self, read: &Arc<dyn ReadStore>, projection: &str) -> watch::Receiver<u64> {
        let mut loops = self.loops.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = loops.get(projection) {
            return sender.subscribe();
        }
        let (sender, receiver) = watch::channel(0);
        loops.insert(projection.to_string(), sender.clone());
        tokio::spawn(poll(
            self.loops.clone(),
            read.clone(),
            projection.to_string(),
            sender,
        ));
        receiver
    }
}

async fn poll(
    loops: Arc<Mutex<HashMap<String, watch::Sender<u64>>>>,
    read: Arc<dyn ReadStore>,
    projection: String,
    sender: watch::Sender<u64>,
) {
    loop {
        match read.checkpoint(&projection).await {
            Ok(position) => {
                sender.send_if_modified(|current| {
                    let moved = position > *current;
                    *current = (*current).max(position);
                    moved
                });
            }
            // The waiting reads time out with 503 if this persists.
            Err(err) => tracing::debug!(%projection, error = %err, "checkpoint not read"),
        }
        tokio::time::sleep(POLL_EVERY).await;
        // Checked under the lock that `subscribe` takes, so no new receiver is left behind.
        let mut running = loops.lock().unwrap_or_else(PoisonError::into_inner);
        if sender.receiver_count() == 0 {
            running.remove(&projection);
            return;
        }
    }
}
