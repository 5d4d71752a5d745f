//! The job queue: durable jobs in Redis, run by apalis workers.
//!
//! Why our own storage instead of apalis-redis: measured with apalis-redis 1.0.0 (see
//! `docs/adr/0001-queue-backend.md`), a backlog above ~8,000 due jobs wedges every worker,
//! one undecodable payload kills a worker, any Redis hiccup stops it, retry delays and
//! `max_attempts` are ignored, and a SIGKILLed worker's jobs wait 300 s. A KYC fleet must not
//! lose or stall a verification, so the storage is ours; apalis still runs the workers
//! (tower layers, concurrency, graceful shutdown) through its `Backend` trait.
//!
//! # Layout in Redis (per queue, see [`keys`])
//! - `ready`: a Stream read through one consumer group. Each process is a uniquely named
//!   consumer; one `XREADGROUP` over the ready streams of all its queues blocks on a
//!   connection of its own (see `fetch`), so an idle worker picks a job up the moment it
//!   is added and an idle process's traffic does not grow with its number of queues. A
//!   finished job is `XACK`ed and `XDEL`eted, so memory stays flat.
//! - `delayed` + `payloads`: a sorted set of due times and a hash of envelopes. Every process
//!   sleeps until the earliest due time and is woken on the queue's `wake` channel when an
//!   earlier job is scheduled (`promote`); it promotes due jobs in bounded chunks with one
//!   script (`scripts::PROMOTE`); a job id is
//!   one slot, so scheduling the same id again moves it instead of adding a second copy.
//! - `dead`: a Stream of jobs that cannot run, each with its reason.
//!
//! # Guarantees
//! At-least-once: a job leaves `ready` only in the same atomic step that finishes, reschedules
//! or buries it. A process that dies holding jobs loses them to `XAUTOCLAIM` after
//! `queue.reclaim_after`; a live process keeps its jobs fresh (`scripts::REFRESH`) so a long
//! job is never stolen. A job abandoned `queue.max_deliveries` times (it kills whatever runs
//! it) is dead-lettered. Redis errors never stop a worker: it backs off and resumes.

mod backend;
mod connection;
mod envelope;
mod fetch;
mod finish;
pub mod keys;
mod maintenance;
mod promote;
mod retry;
mod scripts;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::AsyncCommands;

pub use backend::{Delivery, RedisBackend};
pub use connection::{
    eviction_policy, ConnectError, Connector, RedisConnection, OUTAGE_WARNING_EVERY,
};
pub use envelope::{DecodeError, Envelope, Job};
pub use keys::QueueKeys;
pub use maintenance::Maintenance;
pub use retry::{Completion, JobError, RetryPolicy, Verdict};

use crate::settings::QueueSettings;

/// A queue operation that could not reach Redis or got a reply it did not expect.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("cannot encode job: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Counts for one queue, cheap to sample (a handful of O(1) and O(log n) commands).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueStats {
    /// Waiting in the stream, not yet handed to a worker.
    pub ready: u64,
    /// Handed to a worker and not finished.
    pub in_flight: u64,
    /// Waiting for their due time.
    pub scheduled: u64,
    pub dead: u64,
    /// Age of the oldest job that is due and not started, in ms (0 when none).
    pub lag_ms: u64,
}

/// One dead-lettered job.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadJob {
    /// The dead stream's entry id; also when it died (its ms part).
    pub entry_id: String,
    pub job_id: String,
    pub reason: String,
    pub attempts: u32,
    /// The stored envelope (or undecodable text) as it was.
    pub payload: String,
}

impl DeadJob {
    /// Unix ms when the job was dead-lettered.
    pub fn died_at_ms(&self) -> u64 {
        entry_ms(&self.entry_id)
    }
}

/// The producer and operator side of every queue: push, schedule, inspect, replay.
/// Cheap to clone; all clones share one multiplexed connection.
#[derive(Clone)]
pub struct Queue {
    /// Its connector also makes the dedicated blocking connection of each reader.
    conn: RedisConnection,
    /// The readers feeding this process's workers (see [`fetch`]).
    readers: fetch::Readers,
    prefix: String,
    settings: QueueSettings,
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Queue {
    /// A queue over a connection made by the process's [`Connector`].
    pub fn new(conn: RedisConnection, prefix: &str, settings: QueueSettings) -> Self {
        Self {
            conn,
            readers: fetch::Readers::default(),
            prefix: prefix.to_owned(),
            settings,
            metrics: None,
        }
    }

    /// A queue on the standalone Redis at `url` (tests, benchmarks, tools).
    pub async fn connect(
        url: &str,
        prefix: &str,
        settings: QueueSettings,
    ) -> Result<Self, QueueError> {
        Ok(Self::new(connect(url).await?, prefix, settings))
    }

    /// Counts finished deliveries in `kyc_jobs_total` and their duration.
    pub fn with_metrics(mut self, metrics: std::sync::Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub(crate) fn metrics(&self) -> Option<&crate::metrics::Metrics> {
        self.metrics.as_deref()
    }

    /// Makes the dedicated connections readers block on.
    pub(crate) fn connector(&self) -> &Connector {
        self.conn.connector()
    }

    fn readers(&self) -> &fetch::Readers {
        &self.readers
    }

    /// A key of the queue machinery shared by every queue (`<prefix>:<name>`; outside
    /// `<prefix>:queue:` so it is never taken for a queue).
    pub(crate) fn fleet_key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    pub fn keys(&self, queue: &str) -> QueueKeys {
        QueueKeys::new(&self.prefix, queue)
    }

    pub fn settings(&self) -> &QueueSettings {
        &self.settings
    }

    pub(crate) fn connection(&self) -> RedisConnection {
        self.conn.clone()
    }

    /// Adds a job to run now; returns its id.
    pub async fn push<A: Job>(&self, args: &A) -> Result<String, QueueError> {
        let id = uuid::Uuid::new_v4().to_string();
        self.push_with_id(&id, args).await?;
        Ok(id)
    }

    /// Adds a job to run now under a chosen id.
    pub async fn push_with_id<A: Job>(&self, id: &str, args: &A) -> Result<(), QueueError> {
        let envelope = Envelope::new(id.to_owned(), args, self.deadline_from_now())?;
        let mut conn = self.conn.clone();
        let _: String = conn
            .xadd(self.keys(A::QUEUE).ready, "*", &[("j", envelope.encode())])
            .await?;
        Ok(())
    }

    /// A job to run now as [`Queue::push`] would add it — the ready stream's key and the
    /// envelope — for a script that adds it together with other writes, atomically.
    pub fn prepare<A: Job>(&self, args: &A) -> Result<(String, String), QueueError> {
        let id = uuid::Uuid::new_v4().to_string();
        let envelope = Envelope::new(id, args, self.deadline_from_now())?;
        Ok((self.keys(A::QUEUE).ready, envelope.encode()))
    }

    /// Adds many jobs to run now in one round trip; returns their ids.
    pub async fn push_many<A: Job>(&self, jobs: &[A]) -> Result<Vec<String>, QueueError> {
        let keys = self.keys(A::QUEUE);
        let deadline = self.deadline_from_now();
        let mut pipe = redis::pipe();
        let mut ids = Vec::with_capacity(jobs.len());
        for args in jobs {
            let id = uuid::Uuid::new_v4().to_string();
            let envelope = Envelope::new(id.clone(), args, deadline)?;
            pipe.xadd(&keys.ready, "*", &[("j", envelope.encode())])
                .ignore();
            ids.push(id);
        }
        let mut conn = self.conn.clone();
        let _: () = pipe.query_async(&mut conn).await?;
        Ok(ids)
    }

    /// Schedules a job for `at`. The id is the job's slot: scheduling the same id again
    /// moves the job rather than adding a second one.
    pub async fn push_at<A: Job>(
        &self,
        id: &str,
        args: &A,
        at: SystemTime,
    ) -> Result<(), QueueError> {
        self.schedule_many::<A, &A>(&[(id.to_owned(), args, at)], false)
            .await
    }

    /// Runs the job in slot `id` now: a run scheduled there is replaced. A run of the slot
    /// already under way is not stopped; when it finishes, its next run and this one's meet
    /// in the slot again (the earlier wins), so the chain stays one.
    pub async fn run_now<A: Job>(&self, id: &str, args: &A) -> Result<(), QueueError> {
        let keys = self.keys(A::QUEUE);
        let envelope = Envelope::new(id.to_owned(), args, self.deadline_from_now())?;
        let mut conn = self.conn.clone();
        let _: i64 = scripts::RUN_NOW
            .key(&keys.delayed)
            .key(&keys.payloads)
            .key(&keys.ready)
            .arg(id)
            .arg(envelope.encode())
            .arg(now_ms())
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Like [`Queue::push_at`], but never moves a job already in the slot to a later time.
    pub async fn push_no_later<A: Job>(
        &self,
        id: &str,
        args: &A,
        at: SystemTime,
    ) -> Result<(), QueueError> {
        self.schedule_many::<A, &A>(&[(id.to_owned(), args, at)], true)
            .await
    }

    /// Schedules many jobs in one round trip (each as [`Queue::push_at`]).
    pub async fn push_at_many<A: Job, J: std::borrow::Borrow<A>>(
        &self,
        jobs: &[(String, J, SystemTime)],
    ) -> Result<(), QueueError> {
        self.schedule_many(jobs, false).await
    }

    async fn schedule_many<A: Job, J: std::borrow::Borrow<A>>(
        &self,
        jobs: &[(String, J, SystemTime)],
        earlier_only: bool,
    ) -> Result<(), QueueError> {
        let keys = self.keys(A::QUEUE);
        let mut pipe = redis::pipe();
        for (id, args, at) in jobs {
            let due = unix_ms(*at);
            let envelope = Envelope::new(id.clone(), args.borrow(), self.deadline_from(due))?;
            pipe.invoke_script(
                scripts::SCHEDULE
                    .key(&keys.delayed)
                    .key(&keys.payloads)
                    .arg(id)
                    .arg(due)
                    .arg(envelope.encode())
                    .arg(u8::from(earlier_only))
                    .arg(&keys.wake),
            )
            .ignore();
        }
        let mut conn = self.conn.clone();
        match pipe.query_async::<()>(&mut conn).await {
            // A pipelined EVALSHA does not fall back to EVAL: after a Redis restart (or on
            // a new server) load the script once and send the batch again; SCHEDULE only
            // sets, so a partly applied first attempt is harmless.
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                let _: String = scripts::SCHEDULE.load_async(&mut conn).await?;
                pipe.query_async::<()>(&mut conn).await?;
            }
            other => other?,
        }
        Ok(())
    }

    /// Deletes jobs of a queue whose arguments match `names` (waiting, scheduled or dead;
    /// a job already running finishes). For erasure: returns how many were removed.
    pub async fn purge_jobs(
        &self,
        queue: &str,
        names: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<usize, QueueError> {
        let keys = self.keys(queue);
        let mut conn = self.conn.clone();
        let matches = |raw: &str| {
            serde_json::from_str::<Envelope>(raw)
                .ok()
                .and_then(|e| serde_json::from_str::<serde_json::Value>(e.args.get()).ok())
                .is_some_and(|args| names(&args))
        };
        let mut removed = 0;
        let in_flight: Vec<String> = match conn
            .xpending_count::<_, _, _, _, _, redis::streams::StreamPendingCountReply>(
                &keys.ready,
                keys::GROUP,
                "-",
                "+",
                10_000,
            )
            .await
        {
            Ok(reply) => reply.ids.into_iter().map(|p| p.id).collect(),
            Err(_) => Vec::new(),
        };
        for stream in [&keys.ready, &keys.dead] {
            let all: redis::streams::StreamRangeReply = conn.xrange_all(stream).await?;
            let ids: Vec<String> = all
                .ids
                .iter()
                .filter(|e| !in_flight.contains(&e.id))
                .filter(|e| fetch::stream_field(e, "j").is_some_and(|j| matches(&j)))
                .map(|e| e.id.clone())
                .collect();
            if !ids.is_empty() {
                let n: usize = conn.xdel(stream, &ids).await?;
                removed += n;
            }
        }
        let payloads: std::collections::HashMap<String, String> =
            conn.hgetall(&keys.payloads).await?;
        for (id, raw) in payloads {
            if matches(&raw) {
                let _: () = redis::pipe()
                    .atomic()
                    .zrem(&keys.delayed, &id)
                    .ignore()
                    .hdel(&keys.payloads, &id)
                    .ignore()
                    .query_async(&mut conn)
                    .await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes a scheduled job from its slot; `true` when one was there.
    pub async fn unschedule(&self, queue: &str, id: &str) -> Result<bool, QueueError> {
        let keys = self.keys(queue);
        let mut conn = self.conn.clone();
        let (removed, _): (i64, i64) = redis::pipe()
            .atomic()
            .zrem(&keys.delayed, id)
            .hdel(&keys.payloads, id)
            .query_async(&mut conn)
            .await?;
        Ok(removed == 1)
    }

    /// Depths and lag of one queue. The counts come from separate reads, so under load
    /// they are a moment's approximation (in flight never exceeds the stream's length).
    pub async fn stats(&self, queue: &str) -> Result<QueueStats, QueueError> {
        let keys = self.keys(queue);
        let now = now_ms();
        let mut conn = self.conn.clone();
        let (len, scheduled, dead, first_due): (u64, u64, u64, Vec<(String, f64)>) = redis::pipe()
            .xlen(&keys.ready)
            .zcard(&keys.delayed)
            .xlen(&keys.dead)
            .zrange_withscores(&keys.delayed, 0, 0)
            .query_async(&mut conn)
            .await?;
        let (in_flight, oldest_ready) = if len == 0 {
            (0, None)
        } else {
            group_position(&mut conn, &keys).await?
        };
        let ready = len.saturating_sub(in_flight);
        let ready_lag = oldest_ready.map(|ms| now.saturating_sub(ms)).unwrap_or(0);
        let delayed_lag = first_due
            .first()
            .map(|(_, due)| now.saturating_sub(*due as u64))
            .unwrap_or(0);
        Ok(QueueStats {
            ready,
            in_flight: in_flight.min(len),
            scheduled,
            dead,
            lag_ms: ready_lag.max(delayed_lag),
        })
    }

    /// Names of the queues that exist in Redis under this prefix (an operator's view; a
    /// `SCAN`, so not for hot paths).
    pub async fn queue_names(&self) -> Result<Vec<String>, QueueError> {
        let mut conn = self.conn.clone();
        let pattern = format!("{}:queue:*", self.prefix);
        let mut names = std::collections::BTreeSet::new();
        let mut iter: redis::AsyncIter<String> = conn.scan_match(&pattern).await?;
        let head = format!("{}:queue:", self.prefix);
        while let Some(item) = iter.next_item().await {
            let key = item?;
            if let Some((name, _)) = key
                .strip_prefix(&head)
                .and_then(|rest| rest.rsplit_once(':'))
            {
                names.insert(name.to_owned());
            }
        }
        Ok(names.into_iter().collect())
    }

    /// The newest `limit` dead jobs of a queue, newest first.
    pub async fn dead_list(&self, queue: &str, limit: usize) -> Result<Vec<DeadJob>, QueueError> {
        let mut conn = self.conn.clone();
        let reply: redis::streams::StreamRangeReply = conn
            .xrevrange_count(self.keys(queue).dead, "+", "-", limit)
            .await?;
        Ok(reply.ids.into_iter().map(dead_job).collect())
    }

    /// Dead jobs of a queue newest first, strictly older than the entry `before` (from the
    /// newest when `None`), at most `limit`: the dead set a page at a time.
    pub async fn dead_page(
        &self,
        queue: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadJob>, QueueError> {
        let end = before.map_or_else(|| "+".to_owned(), |b| format!("({b}"));
        let mut conn = self.conn.clone();
        let reply: redis::streams::StreamRangeReply = conn
            .xrevrange_count(self.keys(queue).dead, end, "-", limit)
            .await?;
        Ok(reply.ids.into_iter().map(dead_job).collect())
    }

    /// Deletes one dead job; `false` when no such dead entry exists (replayed or deleted
    /// meanwhile).
    pub async fn dead_delete(&self, queue: &str, entry_id: &str) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let removed: u64 = conn.xdel(self.keys(queue).dead, &[entry_id]).await?;
        Ok(removed == 1)
    }

    /// Whether the job `id` still waits on `queue`: scheduled (a delay or a retry) or in
    /// its ready stream (due or running). Reads the ready stream, so it is meant for small
    /// queues such as the operator's.
    pub async fn job_waiting(&self, queue: &str, id: &str) -> Result<bool, QueueError> {
        let keys = self.keys(queue);
        let mut conn = self.conn.clone();
        let delayed: Option<f64> = conn.zscore(&keys.delayed, id).await?;
        if delayed.is_some() {
            return Ok(true);
        }
        let mut from = "-".to_owned();
        loop {
            let page: redis::streams::StreamRangeReply =
                conn.xrange_count(&keys.ready, &from, "+", 200).await?;
            for entry in &page.ids {
                let payload = fetch::stream_field(entry, "j").unwrap_or_default();
                if serde_json::from_str::<Envelope>(&payload).is_ok_and(|e| e.id == id) {
                    return Ok(true);
                }
            }
            match page.ids.last() {
                Some(last) if page.ids.len() == 200 => from = format!("({}", last.id),
                _ => return Ok(false),
            }
        }
    }

    /// Puts one dead job back on the ready stream with its attempts reset; `false` when no
    /// such dead entry exists. Atomic: two operators replaying at once run it once.
    pub async fn dead_replay(&self, queue: &str, entry_id: &str) -> Result<bool, QueueError> {
        let keys = self.keys(queue);
        let mut conn = self.conn.clone();
        let replayed: i64 = scripts::REPLAY
            .key(&keys.dead)
            .key(&keys.ready)
            .arg(entry_id)
            .invoke_async(&mut conn)
            .await?;
        Ok(replayed == 1)
    }

    /// Replays every job dead when the call starts (not those that die again meanwhile);
    /// returns how many.
    pub async fn dead_replay_all(&self, queue: &str) -> Result<usize, QueueError> {
        let keys = self.keys(queue);
        let mut conn = self.conn.clone();
        let newest: redis::streams::StreamRangeReply =
            conn.xrevrange_count(&keys.dead, "+", "-", 1).await?;
        let Some(last) = newest.ids.first().map(|e| e.id.clone()) else {
            return Ok(0);
        };
        let mut replayed = 0;
        loop {
            let batch: redis::streams::StreamRangeReply =
                conn.xrange_count(&keys.dead, "-", &last, 500).await?;
            if batch.ids.is_empty() {
                return Ok(replayed);
            }
            for entry in batch.ids {
                if self.dead_replay(queue, &entry.id).await? {
                    replayed += 1;
                }
            }
        }
    }

    /// Deletes dead jobs that died before `older_than` ago; returns how many.
    pub async fn dead_purge(&self, queue: &str, older_than: Duration) -> Result<u64, QueueError> {
        let cutoff = now_ms().saturating_sub(older_than.as_millis() as u64);
        let mut conn = self.conn.clone();
        let removed: u64 = redis::cmd("XTRIM")
            .arg(self.keys(queue).dead)
            .arg("MINID")
            .arg(cutoff)
            .query_async(&mut conn)
            .await?;
        Ok(removed)
    }

    fn deadline_from_now(&self) -> u64 {
        self.deadline_from(now_ms())
    }

    /// The retry deadline of a job that becomes due at `due_ms`.
    fn deadline_from(&self, due_ms: u64) -> u64 {
        due_ms.saturating_add(self.settings.job_deadline.as_millis() as u64)
    }
}

/// In-flight count and the timestamp of the oldest entry not yet delivered.
async fn group_position(
    conn: &mut RedisConnection,
    keys: &QueueKeys,
) -> Result<(u64, Option<u64>), QueueError> {
    let groups: redis::streams::StreamInfoGroupsReply = match conn.xinfo_groups(&keys.ready).await {
        Ok(g) => g,
        // The stream vanished since XLEN (deleted by an operator): nothing in flight.
        Err(e) if e.to_string().contains("no such key") => return Ok((0, None)),
        Err(e) => return Err(e.into()),
    };
    let Some(group) = groups.groups.into_iter().find(|g| g.name == keys::GROUP) else {
        let first: redis::streams::StreamRangeReply =
            conn.xrange_count(&keys.ready, "-", "+", 1).await?;
        return Ok((0, first.ids.first().map(due_ms)));
    };
    let next: redis::streams::StreamRangeReply = conn
        .xrange_count(&keys.ready, format!("({}", group.last_delivered_id), "+", 1)
        .await?;
    Ok((group.pending as u64, next.ids.first().map(due_ms)))
}

/// When a ready entry became due: its `t` field (set on promotion), else its id's time.
fn due_ms(entry: &redis::streams::StreamId) -> u64 {
    fetch::stream_field(entry, "t")
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| entry_ms(&entry.id))
}

fn dead_job(entry: redis::streams::StreamId) -> DeadJob {
    let text = |field: &str| fetch::stream_field(&entry, field).unwrap_or_default();
    DeadJob {
        job_id: text("id"),
        reason: text("reason"),
        attempts: text("attempts").parse().unwrap_or(0),
        payload: text("j"),
        entry_id: entry.id.clone(),
    }
}

/// A connection to the standalone Redis at `url`, made by a [`Connector`] (tests,
/// benchmarks, tools; the fleet builds its connector from `[redis]`). Lazy: no I/O yet.
pub async fn connect(url: &str) -> Result<RedisConnection, redis::RedisError> {
    Ok(Connector::from_url(url)?.connect())
}

/// The ms part of a stream entry id (`1700000000000-3` → 1700000000000).
pub(crate) fn entry_ms(id: &str) -> u64 {
    id.split('-')
        .next()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(0)
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The wall clock in Unix ms, as the queue reads it.
pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}
