//! The fleet-wide pause of Didit calls.
//!
//! An account-level refusal (no credits, a revoked key) is not any one job's fault: every
//! process must stop calling Didit until a probe proves the cause gone, so the pause lives
//! in Redis, not in a process.

use redis::AsyncCommands;

use super::{Store, StoreResult};
use crate::domain::AccountPause;

impl Store {
    fn pause_key(&self) -> String {
        format!("{}:didit:paused", self.prefix)
    }

    /// The current fleet-wide pause of Didit calls, if any.
    pub(crate) async fn pause(&self) -> StoreResult<Option<AccountPause>> {
        let mut c = self.conn.clone();
        let reason: Option<String> = c.get(self.pause_key()).await?;
        Ok(reason.and_then(|r| AccountPause::parse(&r)))
    }

    /// Pauses Didit calls for the whole fleet until [`Store::resume`]; `false` when they
    /// were paused already.
    pub(crate) async fn set_pause(&self, pause: AccountPause) -> StoreResult<bool> {
        let mut c = self.conn.clone();
        Ok(c.set_nx(self.pause_key(), pause.as_str()).await?)
    }

    pub(crate) async fn resume(&self) -> StoreResult<()> {
        let mut c = self.conn.clone();
        c.del::<_, ()>(self.pause_key()).await?;
        Ok(())
    }
}
