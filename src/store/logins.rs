//! Failed console logins per client address, shared by every process of the fleet, so a
//! flood of wrong tokens is throttled wherever the load balancer sends it. The address is
//! kept only as a salted hash in the key name, for one window.

use std::time::Duration;

use super::{digest, Store, StoreResult};

impl Store {
    fn login_failures_key(&self, client: &str) -> String {
        use secrecy::ExposeSecret;
        format!(
            "{}:console:login_failures:{}",
            self.prefix,
            digest(&[self.settings.subject_salt.expose_secret(), "login", client])
        )
    }

    /// How long `client` must wait before trying again, when it failed `allowed` times in
    /// the current window; `None` when it may try.
    pub(crate) async fn login_throttled(
        &self,
        client: &str,
        allowed: u32,
    ) -> StoreResult<Option<Duration>> {
        let mut c = self.conn.clone();
        let (failures, ttl_ms): (Option<u32>, i64) = redis::pipe()
            .get(self.login_failures_key(client))
            .pttl(self.login_failures_key(client))
            .query_async(&mut c)
            .await?;
        Ok((failures.unwrap_or(0) >= allowed)
            .then(|| Duration::from_millis(ttl_ms.max(1000) as u64)))
    }

    /// Counts one failed login of `client` in a window of `window` that starts with its
    /// first failure; returns the failures so far.
    pub(crate) async fn count_login_failure(
        &self,
        client: &str,
        window: Duration,
    ) -> StoreResult<u32> {
        let key = self.login_failures_key(client);
        let mut c = self.conn.clone();
        let (failures,): (u32,) = redis::pipe()
            .cmd("SET")
            .arg(&key)
            .arg(0)
            .arg("NX")
            .arg("PX")
            .arg(window.as_millis().max(1) as u64)
            .ignore()
            .incr(&key, 1)
            .query_async(&mut c)
            .await?;
        Ok(failures)
    }
}
