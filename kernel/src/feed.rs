//! The in-process feed: tails the event store by global position without ever skipping a
//! position that a still-open transaction could fill (guarantee 4), and fans decoded events
//! out to live subscribers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{broadcast, Notify};

use crate::config::FeedSettings;
use crate::envelope::{RecordedEvent, StoredEvent};
use crate::error::KernelResult;
use crate::ports::EventStore;

/// The most missing positions handed to the store's exact check; a longer gap is one more
/// than any backend checks row by row, so the store falls back to asking by time.
const MAX_CHECKED_MISSING: usize = 1001;

/// A gap the tailer is waiting on.
#[derive(Debug, Clone, Copy)]
struct Gap {
    /// The first missing position.
    position: u64,
    /// The highest position visible when the gap was first seen. Every missing position below
    /// it was allocated before then, so one "nothing open can fill it" answer covers them all.
    horizon: u64,
    first_seen: Instant,
    first_seen_at: chrono::DateTime<chrono::Utc>,
    /// The store said nothing open can fill it. The gap is skipped only if a read made
    /// after that answer still shows it (the filler may have committed just before).
    cleared: bool,
}

/// Reads the store in position order, one batch at a time, gap-safe.
pub struct Tailer {
    store: Arc<dyn EventStore>,
    position: u64,
    settings: FeedSettings,
    wake: Arc<Notify>,
    gap: Option<Gap>,
    /// Missing positions up to here were proven rolled back.
    released_through: u64,
}

impl Tailer {
    pub fn new(
        store: Arc<dyn EventStore>,
        after_position: u64,
        settings: FeedSettings,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            position: after_position,
            settings,
            wake,
            gap: None,
            released_through: 0,
        }
    }

    /// The last position handed out.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Waits until at least one event past the position can be handed out safely, and returns
    /// the contiguous run of them.
    pub async fn next_batch(&mut self) -> KernelResult<Vec<StoredEvent>> {
        loop {
            // Registered for the wake-up before looking: a commit that lands while the store is
            // being read wakes the wait below at once, instead of after a poll interval (the
            // commit notifies only the waiters registered at that moment).
            let wake = self.wake.clone();
            let woken = wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let batch = self.poll().await?;
            if !batch.is_empty() {
                return Ok(batch);
            }
            let _ = tokio::time::timeout(self.settings.poll_interval, woken).await;
        }
    }

    /// One attempt: the contiguous events after the position, possibly none.
    pub async fn poll(&mut self) -> KernelResult<Vec<StoredEvent>> {
        let rows = self
            .store
            .read_all(self.position, self.settings.batch_size)
            .await?;
        let horizon = rows.last().map_or(0, |row| row.position);
        let visible: Vec<u64> = rows.iter().map(|row| row.position).collect();
        let mut accepted = Vec::with_capacity(rows.len());
        for row in rows {
            let expected = self.position + 1;
            if row.position == expected
                || (row.position > expected
                    && self.release_gap(expected, horizon, &visible).await?)
            {
                self.position = row.position;
                self.gap = None;
                accepted.push(row);
            } else {
                break;
            }
        }
        Ok(accepted)
    }

    /// Whether the missing positions from `missing` on can be skipped: only once no
    /// transaction that was open when the gap appeared can still commit into it, or after the
    /// maximum wait when the store cannot tell.
    async fn release_gap(
        &mut self,
        missing: u64,
        horizon: u64,
        visible: &[u64],
    ) -> KernelResult<bool> {
        if missing <= self.released_through {
            return Ok(true);
        }
        let gap = match self.gap {
            Some(gap) if gap.position == missing => gap,
            _ => {
                let gap = Gap {
                    position: missing,
                    horizon,
                    first_seen: Instant::now(),
                    first_seen_at: chrono::Utc::now(),
                    cleared: false,
                };
                self.gap = Some(gap);
                gap
            }
        };
        let waited = gap.first_seen.elapsed();
        if waited >= self.settings.gap_max_wait {
            tracing::warn!(
                position = missing,
                ?waited,
                "releasing a gap after the maximum wait"
            );
            metrics::counter!("quintet_feed_gaps_forced_total").increment(1);
            return Ok(true);
        }
        if waited < self.settings.gap_min_wait {
            return Ok(false);
        }
        if gap.cleared {
            self.released_through = gap.horizon;
            tracing::debug!(
                position = missing,
                through = gap.horizon,
                ?waited,
                "released rolled-back gaps"
            );
            metrics::counter!("quintet_feed_gaps_released_total").increment(1);
            return Ok(true);
        }
        // A second of slack: the store's clock and ours may round differently.
        let since = gap.first_seen_at + chrono::Duration::seconds(1);
        // Every position up to the horizon that this read did not see (`visible` is sorted).
        let absent: Vec<u64> = (gap.position..gap.horizon)
            .filter(|position| visible.binary_search(position).is_err())
            .take(MAX_CHECKED_MISSING)
            .collect();
        if !self.store.missing_may_fill(since, &absent).await? {
            self.gap = Some(Gap {
                cleared: true,
                ..gap
            });
        }
        Ok(false)
    }
}

/// Fans decoded events out to live subscribers, remembering the last position sent so a new
/// subscriber can replay up to it from the store and go live with no gap and no duplicate.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Mutex<HubState>>,
    sender: broadcast::Sender<Arc<RecordedEvent>>,
}

struct HubState {
    position: u64,
}

impl Hub {
    pub fn new(capacity: usize, position: u64) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(16));
        Self {
            inner: Arc::new(Mutex::new(HubState { position })),
            sender,
        }
    }

    /// Publishes an event; positions must be increasing.
    pub fn publish(&self, event: RecordedEvent) {
        let mut state = self.inner.lock();
        state.position = event.position;
        // Sent while holding the lock, so `subscribe` sees the position and the channel agree.
        let _ = self.sender.send(Arc::new(event));
    }

    /// Moves the position past events that were not published (none of them were for anyone).
    pub fn advance(&self, position: u64) {
        let mut state = self.inner.lock();
        state.position = state.position.max(position);
    }

    /// A receiver of every event after the returned position.
    pub fn subscribe(&self) -> (u64, broadcast::Receiver<Arc<RecordedEvent>>) {
        let state = self.inner.lock();
        (state.position, self.sender.subscribe())
    }

    pub fn position(&self) -> u64 {
        self.inner.lock().position
    }
}

/// How long a caller waits for positions (used by tests and readiness).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);
