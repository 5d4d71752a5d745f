//! The fleet-wide Didit rate limiter, kept in Redis so every process shares one budget.
//!
//! Didit limits per API key over a 60 s sliding window (GET 600, writes 300, session create
//! 600, PDF 50 on top of GET), so the fleet counts the same way: one sorted set per scope
//! holds the instants of the calls admitted in the current window, and one script, on Redis's
//! clock, checks every scope a call needs and admits it into all of them at once. A window
//! (not a token bucket with a burst) never admits more than Didit would inside any 60 s.
//!
//! A caller is never blocked: a refusal says how long until a slot frees, and the job
//! re-schedules itself. Work that can wait (safety-net polls) may use only `low_share` of a
//! window, so session creation and webhook-triggered reads go first when budget is short.
//! A 429 from Didit pauses the scope for the whole fleet until its `Retry-After`.

use std::{sync::LazyLock, time::Duration};

use didit::Scope;
use redis::Script;

use crate::settings::RateLimitSettings;

/// Checks and takes one slot in each scope. KEYS: per scope the window set, then its pause
/// key. ARGV: window ms (Didit's window plus our margin), member, then per scope its limit.
/// Returns 0 when admitted, else the ms to wait.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local scopes = #KEYS / 2
local wait = 0
for i = 1, scopes do
  local set, pause = KEYS[2 * i - 1], KEYS[2 * i]
  local paused = redis.call('PTTL', pause)
  if paused > 0 and paused > wait then wait = paused end
  redis.call('ZREMRANGEBYSCORE', set, '-inf', now - window)
  local limit = tonumber(ARGV[2 + i])
  if redis.call('ZCARD', set) >= limit then
    local oldest = redis.call('ZRANGE', set, 0, 0, 'WITHSCORES')
    local free_in = 1
    if oldest[2] then free_in = tonumber(oldest[2]) + window - now + 1 end
    if free_in > wait then wait = free_in end
  end
end
if wait > 0 then return wait end
for i = 1, scopes do
  redis.call('ZADD', KEYS[2 * i - 1], now, ARGV[2])
  redis.call('PEXPIRE', KEYS[2 * i - 1], window)
end
return 0
"#,
    )
});

/// How urgent a call is when budget is short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Session creation, webhook-triggered reads, operator actions.
    High,
    /// Safety-net polls and sweeps: only up to `low_share` of a window.
    Low,
}

/// The limiter of one deployment (one API key).
#[derive(Clone)]
pub struct RateLimiter {
    conn: crate::queue::RedisConnection,
    prefix: String,
    settings: RateLimitSettings,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("settings", &self.settings)
            .finish()
    }
}

impl RateLimiter {
    pub fn new(
        conn: crate::queue::RedisConnection,
        prefix: &str,
        settings: RateLimitSettings,
    ) -> Self {
        Self {
            conn,
            prefix: prefix.to_owned(),
            settings,
        }
    }

    fn window_key(&self, scope: Scope) -> String {
        format!("{}:ratelimit:{}", self.prefix, scope.as_str())
    }

    fn pause_key(&self, scope: Scope) -> String {
        format!("{}:ratelimit:{}:paused", self.prefix, scope.as_str())
    }

    fn limit(&self, scope: Scope, priority: Priority) -> u32 {
        let full = match scope {
            Scope::Get => self.settings.get,
            Scope::Write => self.settings.write,
            Scope::Create => self.settings.create,
            Scope::Pdf => self.settings.pdf,
            Scope::Account => u32::MAX,
        };
        match priority {
            Priority::High => full,
            Priority::Low => ((f64::from(full) * self.settings.low_share).floor() as u32).max(1),
        }
    }

    /// Takes a slot in every scope of a call, or says how long to wait. Never blocks.
    pub async fn acquire(
        &self,
        scopes: &[Scope],
        priority: Priority,
    ) -> redis::RedisResult<Option<Duration>> {
        let scopes: Vec<Scope> = scopes
            .iter()
            .copied()
            .filter(|s| *s != Scope::Account)
            .collect();
        if scopes.is_empty() || !self.settings.enabled {
            return Ok(None);
        }
        let mut invocation = ACQUIRE.prepare_invoke();
        for scope in &scopes {
            invocation
                .key(self.window_key(*scope))
                .key(self.pause_key(*scope));
        }
        // A call admitted now may reach Didit a little later than one admitted after it; a
        // slot held for window + margin keeps every window as Didit counts it within budget.
        invocation
            .arg((self.settings.window + self.settings.margin).as_millis() as u64)
            .arg(uuid::Uuid::new_v4().to_string());
        for scope in &scopes {
            invocation.arg(self.limit(*scope, priority));
        }
        let mut conn = self.conn.clone();
        let wait_ms: u64 = invocation.invoke_async(&mut conn).await?;
        Ok((wait_ms > 0).then(|| Duration::from_millis(wait_ms)))
    }

    /// Calls admitted in the current window and the window's limit, per bucket, for the
    /// operator console (a ZCOUNT per bucket; Redis drops old instants on the next acquire).
    pub async fn usage(&self) -> redis::RedisResult<Vec<(Scope, u64, u32)>> {
        let since = crate::queue::now_ms()
            .saturating_sub((self.settings.window + self.settings.margin).as_millis() as u64);
        let scopes = [Scope::Get, Scope::Write, Scope::Create, Scope::Pdf];
        let mut pipe = redis::pipe();
        for scope in scopes {
            pipe.zcount(self.window_key(scope), since, "+inf");
        }
        let mut conn = self.conn.clone();
        let used: Vec<u64> = pipe.query_async(&mut conn).await?;
        Ok(scopes
            .into_iter()
            .zip(used)
            .map(|(scope, used)| (scope, used, self.limit(scope, Priority::High)))
            .collect())
    }

    /// Pauses the scopes of a call for the whole fleet (Didit answered 429).
    pub async fn pause(&self, scopes: &[Scope], for_how_long: Duration) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        for scope in scopes.iter().filter(|s| **s != Scope::Account) {
            pipe.cmd("SET")
                .arg(self.pause_key(*scope))
                .arg(1)
                .arg("PX")
                .arg(for_how_long.as_millis().max(1) as u64)
                .ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async(&mut conn).await
    }
}
