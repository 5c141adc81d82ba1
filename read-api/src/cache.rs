//! Cache-aside for reads by id. Projections invalidate the keys of the documents they change
//! after each commit; a reader that fills the cache re-checks the projection's checkpoint
//! afterwards and drops its entry if anything was applied meanwhile, so a stale document read
//! before an apply can never outlive that apply's invalidation.

use serde_json::Value;

use kernel::KernelResult;

use crate::ReadState;

/// The cache key of a read-model document.
pub fn key(collection: &str, id: &str) -> String {
    format!("{collection}/{id}")
}

impl ReadState {
    /// The projection's checkpoint as this process knows it (live when it runs in-process).
    pub async fn checkpoint(&self, projection: &str) -> KernelResult<u64> {
        match self.checkpoints.get(projection) {
            Some(receiver) => Ok(*receiver.borrow()),
            None => self.read.checkpoint(projection).await,
        }
    }

    /// A document by id, through the cache. A cache that fails is skipped, never an error.
    pub async fn cached_get(
        &self,
        projection: &str,
        collection: &str,
        id: &str,
    ) -> KernelResult<Option<Value>> {
        let key = key(collection, id);
        if let Ok(Some(hit)) = self.cache.get(&key).await {
            return Ok(Some(hit));
        }
        let before = self.checkpoint(projection).await?;
        let Some(doc) = self.read.get(collection, id).await? else {
            return Ok(None);
        };
        if let Err(err) = self.cache.put(&key, &doc, Some(self.cache_ttl)).await {
            tracing::warn!(error = %err, "read cache put failed");
            return Ok(Some(doc));
        }
        if self.checkpoint(projection).await? != before {
            let _ = self.cache.invalidate(&key).await;
        }
        Ok(Some(doc))
    }
}
