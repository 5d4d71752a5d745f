//! Webhook deliveries already seen.
//!
//! Didit retries a webhook it thinks failed, and may deliver the same one twice: a delivery
//! id is remembered for a while so the second copy costs nothing. The id is hashed into
//! the key name like every caller-chosen string.

use std::time::Duration;

use redis::AsyncCommands;

use super::{digest, Store, StoreResult};

impl Store {
    fn delivery_key(&self, key: &str) -> String {
        format!("{}:webhook:{}", self.prefix, digest(&[key]))
    }

    /// How long a webhook delivery id is remembered: Didit retries within minutes, and no
    /// key outlives the record retention.
    pub(crate) fn dedupe_ttl(&self) -> Duration {
        Duration::from_secs(24 * 3600).min(self.settings.record_retention)
    }

    /// Remembers a webhook delivery id; `false` when it was seen before.
    pub(crate) async fn first_delivery(&self, key: &str, ttl: Duration) -> StoreResult<bool> {
        let mut c = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(self.delivery_key(key))
            .arg(1)
            .arg("NX")
            .arg("EX")
            .arg(ttl.as_secs().max(1))
            .query_async(&mut c)
            .await?;
        Ok(set.is_some())
    }

    /// Forgets a delivery id so a retry of it is processed.
    pub(crate) async fn forget_delivery(&self, key: &str) -> StoreResult<()> {
        let mut c = self.conn.clone();
        c.del::<_, ()>(self.delivery_key(key)).await?;
        Ok(())
    }
}
