//! Chaos: the fleet as `kyc-worker run` child processes against a real `redis-server` and the
//! sandbox over HTTP, while something breaks — a worker SIGKILLed again and again, Redis
//! killed and restarted from its AOF, Didit answering 5xx slowly under a tight rate limit, a
//! worker SIGTERMed under load. Each scenario checks that every request ends in exactly one
//! outcome event per status and that Didit created exactly one session per request.
//!
//! Size: `KYC_CHAOS_SESSIONS` sessions per scenario (default 40, so `make test` stays fast;
//! `make chaos` runs 500 in release). Each scenario prints its counts with `eprintln!`
//! (`--nocapture` shows them); worker logs go to the file whose path it prints first, kept
//! only when the scenario fails.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    time::{Duration, Instant},
};

use kyc_worker::domain::StartRequest;

use crate::helpers::{
    eventually, free_port, spawn_app, AppOptions, ChildGuard, TestApp, TestRedis,
};

type Event = HashMap<String, String>;

/// Sessions per scenario.
fn sessions() -> usize {
    std::env::var("KYC_CHAOS_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(40)
}

/// Scenario → the status Didit reaches; requests cycle through them.
const OUTCOMES: [(&str, &str); 3] = [
    ("approve", "Approved"),
    ("decline_document_expired", "Declined"),
    ("review_face_match_borderline", "In Review"),
];

/// One request of a scenario and what it must end in.
struct Expected {
    vendor_data: String,
    status: &'static str,
}

/// The requests of one scenario, by request_id.
struct Load {
    name: &'static str,
    requests: BTreeMap<String, Expected>,
    started: Instant,
    log: PathBuf,
}

impl Load {
    fn n(&self) -> usize {
        self.requests.len()
    }

    /// Names a request for a failure message.
    fn describe(&self, request_id: &str) -> String {
        match self.requests.get(request_id) {
            Some(e) => format!(
                "request_id={request_id} vendor_data={} (expects {})",
                e.vendor_data, e.status
            ),
            None => format!("request_id={request_id} (not one of this scenario's requests)"),
        }
    }
}

impl Drop for Load {
    /// The worker log is kept only when the scenario failed.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// A `kyc-worker run` child process and the port of its HTTP server.
struct Worker {
    child: ChildGuard,
    port: u16,
}

impl Worker {
    fn start(app: &TestApp, load: &Load) -> Worker {
        Self::start_on(app, load, free_port())
    }

    fn start_on(app: &TestApp, load: &Load, port: u16) -> Worker {
        let child = app.spawn_worker(&[("KYC__HTTP__PORT", port.to_string())], Some(&load.log));
        Worker { child, port }
    }

    fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn sigterm(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success(), "kill -TERM failed");
    }

    async fn ready_status(&self) -> Option<u16> {
        let response = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/readyz", self.port))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        Some(response.status().as_u16())
    }
}

impl Drop for Worker {
    /// A failed scenario leaves no process behind.
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// Enqueues `sessions()` requests through the Rust producer.
async fn enqueue(app: &TestApp, name: &'static str) -> Load {
    enqueue_n(app, name, sessions()).await
}

/// Enqueues `n` requests through the Rust producer.
async fn enqueue_n(app: &TestApp, name: &'static str, n: usize) -> Load {
    let log = std::env::temp_dir().join(format!(
        "kyc-chaos-{name}-{}-{}.log",
        std::process::id(),
        app.port
    ));
    eprintln!("[chaos {name}] worker logs: {}", log.display());
    let producer = app.producer().await;
    let mut requests = BTreeMap::new();
    for i in 0..n {
        let (scenario, status) = OUTCOMES[i % OUTCOMES.len()];
        let request_id = format!("{name}-req-{i:04}");
        let vendor_data = format!("{name}-user-{i:04}");
        producer
            .start_kyc(StartRequest {
                request_id: Some(request_id.clone()),
                vendor_data: vendor_data.clone(),
                sandbox_scenario: Some(scenario.into()),
                ..Default::default()
            })
            .await
            .expect("enqueue");
        requests.insert(
            request_id,
            Expected {
                vendor_data,
                status,
            },
        );
    }
    Load {
        name,
        requests,
        started: Instant::now(),
        log,
    }
}

/// Requests without their expected decided event yet.
fn missing<'a>(load: &'a Load, events: &[Event]) -> Vec<&'a str> {
    load.requests
        .iter()
        .filter(|(id, e)| {
            !events.iter().any(|ev| {
                ev["type"] == "kyc.session.decided"
                    && ev["request_id"] == **id
                    && ev["status"] == e.status
            })
        })
        .map(|(id, _)| id.as_str())
        .collect()
}

/// Waits until every request has its decided event; a timeout names the requests still open.
async fn wait_outcomes(app: &TestApp, load: &Load) -> Vec<Event> {
    let deadline = Duration::from_secs(60) + Duration::from_millis(300) * load.n() as u32;
    let until = Instant::now() + deadline;
    loop {
        let events = app.events().await;
        let open = missing(load, &events);
        if open.is_empty() {
            return events;
        }
        if Instant::now() > until {
            let named: Vec<String> = open
                .iter()
                .take(10)
                .map(|id| {
                    let seen: Vec<String> = events
                        .iter()
                        .filter(|e| e["request_id"] == *id)
                        .map(|e| format!("{}/{}", e["type"], e["status"]))
                        .collect();
                    format!("{} has {seen:?}", load.describe(id))
                })
                .collect();
            panic!(
                "[chaos {}] {} of {} requests undecided after {deadline:?} (worker logs: {}):\n{}",
                load.name,
                open.len(),
                load.n(),
                load.log.display(),
                named.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Exactly one `created` and one `decided` (with the expected status) per request, nothing
/// else, and no event for a request this scenario did not make.
fn assert_exactly_once(load: &Load, events: &[Event]) {
    let mut seen: HashMap<(&str, &str, &str), usize> = HashMap::new();
    for e in events {
        let id = e["request_id"].as_str();
        assert!(
            load.requests.contains_key(id),
            "[chaos {}] an event for an unknown request: {e:?}",
            load.name
        );
        *seen
            .entry((id, e["type"].as_str(), e["status"].as_str()))
            .or_default() += 1;
    }
    for ((id, kind, status), count) in &seen {
        assert_eq!(
            *count,
            1,
            "[chaos {}] {} got {count} {kind} events with status {status:?}",
            load.name,
            load.describe(id)
        );
    }
    for (id, expected) in &load.requests {
        let kinds: Vec<(&str, &str)> = seen
            .keys()
            .filter(|(r, _, _)| r == id)
            .map(|(_, k, s)| (*k, *s))
            .collect();
        let created = kinds
            .iter()
            .filter(|(k, _)| *k == "kyc.session.created")
            .count();
        let outcomes: Vec<&(&str, &str)> = kinds
            .iter()
            .filter(|(k, _)| *k != "kyc.session.created")
            .collect();
        assert!(
            created == 1 && outcomes == [&("kyc.session.decided", expected.status)],
            "[chaos {}] {} has events {kinds:?}",
            load.name,
            load.describe(id)
        );
    }
}

/// No job of the pipeline ended in the dead set.
async fn assert_no_dead(app: &TestApp, load: &Load) {
    let queue = kyc_worker::queue::Queue::connect(&app.redis.url(), "kyc", Default::default())
        .await
        .expect("queue");
    for q in ["start", "poll"] {
        let dead = queue.dead_list(q, 10).await.expect("dead list");
        assert!(
            dead.is_empty(),
            "[chaos {}] dead jobs in {q}: {dead:?}",
            load.name
        );
    }
}

/// Prints the scenario's counts and checks one Didit session per request.
async fn report(app: &TestApp, load: &Load, events: &[Event], chaos: &str) -> serde_json::Value {
    let stats = app.sandbox_stats().await;
    let mut by_type: BTreeMap<&str, usize> = BTreeMap::new();
    for e in events {
        *by_type.entry(e["type"].as_str()).or_default() += 1;
    }
    eprintln!(
        "[chaos {}] sessions={} events={} {by_type:?} didit_requests={} sessions_created={} \
         sessions_reused={} injected_errors={} {chaos} elapsed={:.1}s",
        load.name,
        load.n(),
        events.len(),
        stats["requests"],
        stats["sessions_created"],
        stats["sessions_reused"],
        stats["injected_errors"],
        load.started.elapsed().as_secs_f64()
    );
    assert_eq!(
        stats["sessions_created"].as_u64(),
        Some(load.n() as u64),
        "[chaos {}] Didit sessions created vs requests",
        load.name
    );
    stats
}

/// Waits until at least `n` sessions exist, so the chaos hits work in flight.
async fn wait_created(app: &TestApp, n: usize) {
    eventually(
        &format!("{n} sessions created"),
        Duration::from_secs(60),
        || async {
            let created = app
                .events()
                .await
                .iter()
                .filter(|e| e["type"] == "kyc.session.created")
                .count();
            (created >= n).then_some(())
        },
    )
    .await;
}

fn polling_fleet() -> AppOptions {
    AppOptions {
        webhooks: false,
        in_process: false,
        complete_after: Duration::from_millis(2000),
        ..Default::default()
    }
}

#[tokio::test]
async fn chaos_workers_sigkilled_repeatedly_lose_and_double_nothing() {
    // Arrange: two polling workers; sessions take 2 s at the sandbox, so work is in flight.
    let app = spawn_app(polling_fleet()).await;
    let load = enqueue(&app, "sigkill").await;
    let mut workers = [Worker::start(&app, &load), Worker::start(&app, &load)];
    wait_created(&app, (load.n() / 8).max(2)).await;

    // Act: SIGKILL a worker every 1.5 s, alternating, restarting it each time, until every
    // request is decided (at least 5 kills; more for bigger runs).
    let min_kills = (load.n() / 50).max(5);
    let mut kills = 0;
    loop {
        let done = missing(&load, &app.events().await).is_empty();
        if kills >= min_kills && (done || kills >= min_kills * 3) {
            break;
        }
        // Chaos pacing, not synchronisation: the fleet works for a while between kills.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let victim = kills % workers.len();
        workers[victim].sigkill();
        workers[victim] = Worker::start(&app, &load);
        kills += 1;
    }

    // Assert
    let events = wait_outcomes(&app, &load).await;
    assert_exactly_once(&load, &events);
    report(&app, &load, &events, &format!("sigkills={kills}")).await;
    assert_no_dead(&app, &load).await;
}

#[tokio::test]
async fn chaos_redis_restarted_from_aof_mid_run_loses_nothing_and_readiness_follows() {
    // Arrange: Redis with AOF fsynced on every write; two workers.
    let mut app = spawn_app(polling_fleet()).await;
    app.redis = TestRedis::start_with(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--save",
        "",
    ])
    .await;
    app.settings_env
        .insert("KYC__REDIS__URL".into(), app.redis.url());
    // Slow Didit answers keep session creations in flight when Redis dies, so some jobs have
    // created a session at Didit and cannot record it.
    app.sandbox_control(serde_json::json!({"action": "set_latency", "ms": 300}))
        .await;
    let load = enqueue(&app, "redis").await;
    let workers = [Worker::start(&app, &load), Worker::start(&app, &load)];
    for w in &workers {
        eventually("the worker is ready", Duration::from_secs(20), || async {
            (w.ready_status().await == Some(200)).then_some(())
        })
        .await;
    }
    wait_created(&app, 1).await;

    // Act: SIGKILL Redis; readiness turns red; Redis comes back on the same port and data.
    app.redis.kill();
    let down = Instant::now();
    for w in &workers {
        eventually(
            "/readyz red while Redis is down",
            Duration::from_secs(10),
            || async { (w.ready_status().await == Some(503)).then_some(()) },
        )
        .await;
    }
    // Chaos pacing: Redis stays down for 2 s while the workers keep trying.
    tokio::time::sleep(Duration::from_secs(2)).await;
    app.redis.spawn().await;
    let outage = down.elapsed();
    for w in &workers {
        eventually(
            "/readyz green after Redis is back",
            Duration::from_secs(20),
            || async { (w.ready_status().await == Some(200)).then_some(()) },
        )
        .await;
    }

    // Assert: the workers reconnected by themselves and finished everything exactly once.
    let events = wait_outcomes(&app, &load).await;
    assert_exactly_once(&load, &events);
    report(
        &app,
        &load,
        &events,
        &format!("redis_restarts=1 outage={:.1}s", outage.as_secs_f64()),
    )
    .await;
    assert_no_dead(&app, &load).await;
}

/// The fleet's budget per 1 s window in the faulty-Didit scenario; the sandbox allows more.
const FLEET_BUDGET: u64 = 25;
const SANDBOX_LIMIT: u64 = 40;
/// Decision reads allowed per session on average with 30 % 5xx: with webhooks a session
/// needs one successful read (1 / 0.7 ≈ 1.43 tries on average) plus the hourly-like re-read
/// of In Review sessions; more than this is a retry storm.
const DECISION_READS_PER_SESSION: u64 = 3;

#[tokio::test]
async fn chaos_faulty_slow_rate_limited_didit_completes_within_budget_without_a_retry_storm() {
    // Arrange: webhooks to worker A (on the app's port); a tight sandbox limit and a lower
    // fleet budget; then 30 % 5xx and 50 ms latency on every Didit call.
    let app = spawn_app(AppOptions {
        webhooks: true,
        in_process: false,
        complete_after: Duration::from_millis(500),
        sandbox_limits: vec!["get=40/1s", "create=40/1s", "write=40/1s"],
        env: vec![
            ("KYC__RATELIMIT__WINDOW".into(), "1s".into()),
            ("KYC__RATELIMIT__MARGIN".into(), "500ms".into()),
            ("KYC__RATELIMIT__GET".into(), FLEET_BUDGET.to_string()),
            ("KYC__RATELIMIT__CREATE".into(), FLEET_BUDGET.to_string()),
            ("KYC__RATELIMIT__WRITE".into(), FLEET_BUDGET.to_string()),
            ("KYC__QUEUE__RETRY_MIN".into(), "200ms".into()),
            ("KYC__QUEUE__RETRY_MAX".into(), "2s".into()),
        ],
        ..Default::default()
    })
    .await;
    app.sandbox_control(serde_json::json!({"action": "set_error_rate", "rate": 0.3}))
        .await;
    app.sandbox_control(serde_json::json!({"action": "set_latency", "ms": 50}))
        .await;
    let load = enqueue(&app, "faults").await;
    // Kept alive (and killed on drop) until the end of the scenario.
    let _workers = [
        Worker::start_on(&app, &load, app.port),
        Worker::start(&app, &load),
    ];

    // Act
    let events = wait_outcomes(&app, &load).await;

    // Assert
    assert_exactly_once(&load, &events);
    let stats = report(&app, &load, &events, "error_rate=0.3 latency=50ms").await;
    for scope in ["get", "create"] {
        let s = &stats["rate_limits"][scope];
        assert_eq!(s["limit"].as_u64(), Some(SANDBOX_LIMIT), "{scope}: {s}");
        let peak = s["peak_in_window"].as_u64().expect("peak");
        eprintln!(
            "[chaos faults] scope {scope}: peak_in_window={peak} (fleet budget {FLEET_BUDGET}, \
             sandbox limit {SANDBOX_LIMIT}) rate_limited={}",
            s["rate_limited"]
        );
        assert!(
            peak <= FLEET_BUDGET,
            "[chaos faults] the sandbox saw {peak} {scope} calls in one window (budget {FLEET_BUDGET})"
        );
    }
    let reads = stats["requests"]["decision"].as_u64().unwrap_or(0);
    let bound = DECISION_READS_PER_SESSION * load.n() as u64;
    assert!(
        reads <= bound,
        "[chaos faults] {reads} decision reads for {} sessions (bound {bound}): a retry storm",
        load.n()
    );
    assert_no_dead(&app, &load).await;
}

#[tokio::test]
async fn chaos_sigterm_under_load_drains_in_time_exits_0_and_loses_nothing() {
    // Arrange: two polling workers with work in flight (shutdown_timeout is 5 s in tests).
    let app = spawn_app(AppOptions {
        complete_after: Duration::from_millis(1500),
        ..polling_fleet()
    })
    .await;
    let shutdown_timeout = Duration::from_secs(5);
    let load = enqueue(&app, "sigterm").await;
    let mut workers = [Worker::start(&app, &load), Worker::start(&app, &load)];
    wait_created(&app, (load.n() / 4).max(2)).await;

    // Act: SIGTERM one worker under load, then start a replacement.
    let mut terms = 0;
    let started = Instant::now();
    workers[0].sigterm();
    let exit = eventually(
        "the SIGTERMed worker exits",
        shutdown_timeout + Duration::from_secs(5),
        || {
            let exited = workers[0].child.try_wait().expect("try_wait");
            async move { exited }
        },
    )
    .await;
    let drained_in = started.elapsed();
    terms += 1;
    assert_eq!(exit.code(), Some(0), "[chaos sigterm] exit status {exit:?}");
    assert!(
        drained_in <= shutdown_timeout + Duration::from_secs(2),
        "[chaos sigterm] drained in {drained_in:?} (timeout {shutdown_timeout:?})"
    );
    workers[0] = Worker::start(&app, &load);

    // Assert: nothing lost, nothing doubled; then both stop cleanly too.
    let events = wait_outcomes(&app, &load).await;
    assert_exactly_once(&load, &events);
    for w in &workers {
        w.sigterm();
    }
    for w in &mut workers {
        let exit = eventually(
            "an idle worker exits on SIGTERM",
            shutdown_timeout + Duration::from_secs(5),
            || {
                let exited = w.child.try_wait().expect("try_wait");
                async move { exited }
            },
        )
        .await;
        terms += 1;
        assert_eq!(exit.code(), Some(0), "[chaos sigterm] exit status {exit:?}");
    }
    report(
        &app,
        &load,
        &events,
        &format!(
            "sigterms={terms} first_drain={:.1}s",
            drained_in.as_secs_f64()
        ),
    )
    .await;
    assert_no_dead(&app, &load).await;
}

/// When each request's `kyc.session.created` was published (the stream entry's time, Unix ms).
async fn created_at_ms(app: &TestApp) -> HashMap<String, u64> {
    app.event_entries()
        .await
        .into_iter()
        .filter(|(_, e)| e["type"] == "kyc.session.created")
        .filter_map(|(id, e)| {
            let ms = id.split('-').next()?.parse().ok()?;
            Some((e.get("request_id")?.clone(), ms))
        })
        .collect()
}

/// The burst a SIGKILL interrupts in the recovery-bound scenario.
const RECLAIM_BURST: usize = 300;

#[tokio::test]
async fn chaos_after_a_sigkill_mid_burst_of_300_the_last_reclaimed_job_starts_within_the_reclaim_bound(
) {
    // Arrange: the default `queue.reclaim_after` (30 s) and `queue.fetch_block` (5 s), and a
    // Didit request timeout of 25 s, so a request lock that lived twice the request timeout
    // (50 s) would hold the reclaimed jobs past the bound (30 s + 10 s). Didit answers every
    // call after 700 ms, so the victim dies holding its jobs mid-create (intent recorded,
    // lock held).
    let reclaim_after = kyc_worker::settings::QueueSettings::default().reclaim_after;
    let app = spawn_app(AppOptions {
        webhooks: true,
        in_process: false,
        complete_after: Duration::from_millis(500),
        env: vec![
            (
                "KYC__QUEUE__RECLAIM_AFTER".into(),
                format!("{}s", reclaim_after.as_secs()),
            ),
            ("KYC__QUEUE__FETCH_BLOCK".into(), "5s".into()),
            ("KYC__DIDIT__REQUEST_TIMEOUT".into(), "25s".into()),
        ],
        ..Default::default()
    })
    .await;
    app.sandbox_control(serde_json::json!({"action": "set_latency", "ms": 700}))
        .await;
    let load = enqueue_n(&app, "reclaim", RECLAIM_BURST).await;
    let c = app.redis.connection().await;
    let mut victim = Worker::start(&app, &load);
    let mid_create = eventually("the victim mid-create", Duration::from_secs(30), || async {
        // Request records (`kyc:request:<hash>`, beside their `:lock` keys) whose intent is
        // recorded and whose session is not yet.
        let mut c = c.clone();
        let keys: Vec<String> = redis::AsyncCommands::keys(&mut c, "kyc:request:*")
            .await
            .ok()?;
        let mut mid_create = 0;
        for key in keys.iter().filter(|k| !k.ends_with(":lock")) {
            let (intent, session): (Option<String>, Option<String>) = redis::cmd("HMGET")
                .arg(key)
                .arg("intent_at_ms")
                .arg("session_id")
                .query_async(&mut c)
                .await
                .ok()?;
            if intent.is_some() && session.is_none() {
                mid_create += 1;
            }
        }
        // A quarter of the burst, at most half the victim's concurrency (64).
        (mid_create >= (load.n() / 4).clamp(1, 32)).then_some(mid_create)
    })
    .await;

    // Act: SIGKILL it mid-burst; a new process takes over (and Didit's webhooks).
    victim.sigkill();
    let killed_ms = kyc_worker::queue::now_ms();
    let _survivor = Worker::start_on(&app, &load, app.port);
    eprintln!("[chaos reclaim] killed with at least {mid_create} creates in flight");

    // Assert: every request's session is announced within reclaim_after + 10 s of the kill,
    // and nothing is lost or doubled.
    let bound = reclaim_after + Duration::from_secs(10);
    let created = eventually(
        "every request's session created",
        bound + Duration::from_secs(20),
        || async {
            let created = created_at_ms(&app).await;
            (created.len() >= load.n()).then_some(created)
        },
    )
    .await;
    let (last_request, last_ms) = created
        .iter()
        .max_by_key(|(_, ms)| **ms)
        .map(|(r, ms)| (r.clone(), *ms))
        .expect("some");
    let after_kill = Duration::from_millis(last_ms.saturating_sub(killed_ms));
    eprintln!(
        "[chaos reclaim] sessions={} last created {:.1}s after the kill (bound {:.0}s)",
        load.n(),
        after_kill.as_secs_f64(),
        bound.as_secs_f64()
    );
    assert!(
        after_kill <= bound,
        "[chaos reclaim] {} started {after_kill:?} after the kill (bound {bound:?})",
        load.describe(&last_request)
    );
    let events = wait_outcomes(&app, &load).await;
    assert_exactly_once(&load, &events);
    report(&app, &load, &events, "sigkills=1").await;
    assert_no_dead(&app, &load).await;
}

/// Sessions the lookup scenarios make (small: they count Didit calls, not throughput).
const LOOKUP_SESSIONS: usize = 6;

/// Enqueues `n` approve requests named `name-*`; returns when they were enqueued.
async fn enqueue_few(app: &TestApp, name: &str, n: usize) -> u64 {
    let producer = app.producer().await;
    let at = kyc_worker::queue::now_ms();
    for i in 0..n {
        producer
            .start_kyc(StartRequest {
                request_id: Some(format!("{name}-{i}")),
                vendor_data: format!("{name}-user-{i}"),
                sandbox_scenario: Some("approve".into()),
                ..Default::default()
            })
            .await
            .expect("enqueue");
    }
    at
}

#[tokio::test]
async fn chaos_creates_refused_with_429_cost_no_session_lookup() {
    // Arrange: Didit refuses the first creates with 429 (nothing was created).
    let app = spawn_app(AppOptions::default()).await;
    app.sandbox_control(serde_json::json!({
        "action": "fail_next", "endpoint": "session_create",
        "count": LOOKUP_SESSIONS, "status": 429,
    }))
    .await;

    // Act
    enqueue_few(&app, "throttled", LOOKUP_SESSIONS).await;
    app.wait_events("kyc.session.created", LOOKUP_SESSIONS)
        .await;

    // Assert: the retries created at once instead of listing the person's sessions first.
    let stats = app.sandbox_stats().await;
    eprintln!("[chaos 429] didit_requests={}", stats["requests"]);
    assert_eq!(stats["responses"]["session_create"]["429"], LOOKUP_SESSIONS);
    assert_eq!(stats["sessions_created"], LOOKUP_SESSIONS);
    assert_eq!(
        stats["requests"]["session_list"].as_u64().unwrap_or(0),
        0,
        "a create Didit refused unprocessed needs no lookup"
    );
    app.stop().await;
}

#[tokio::test]
async fn chaos_an_ambiguous_create_waits_the_request_timeout_before_its_lookup() {
    // Arrange: a request timeout (8 s) longer than the usual 5 s wait after a 5xx; Didit
    // answers the first create of each request with 500, which may or may not have
    // created the session.
    let timeout = Duration::from_secs(8);
    let app = spawn_app(AppOptions {
        env: vec![(
            "KYC__DIDIT__REQUEST_TIMEOUT".into(),
            format!("{}s", timeout.as_secs()),
        )],
        ..Default::default()
    })
    .await;
    app.sandbox_control(serde_json::json!({
        "action": "fail_next", "endpoint": "session_create",
        "count": LOOKUP_SESSIONS, "status": 500,
    }))
    .await;

    // Act
    let enqueued_ms = enqueue_few(&app, "ambiguous", LOOKUP_SESSIONS).await;
    app.wait_events("kyc.session.created", LOOKUP_SESSIONS)
        .await;

    // Assert: no session was looked up (nor created again) before the first create could
    // have timed out; each request has one session.
    let created = created_at_ms(&app).await;
    let first = created.values().min().copied().unwrap_or(0);
    let waited = Duration::from_millis(first.saturating_sub(enqueued_ms));
    eprintln!(
        "[chaos ambiguous] first session after {:.1}s (request timeout {:.0}s)",
        waited.as_secs_f64(),
        timeout.as_secs_f64()
    );
    assert!(
        waited >= timeout,
        "a lookup ran {waited:?} after an ambiguous create (request timeout {timeout:?})"
    );
    let stats = app.sandbox_stats().await;
    assert_eq!(stats["sessions_created"], LOOKUP_SESSIONS);
    assert_eq!(
        stats["requests"]["session_list"].as_u64().unwrap_or(0),
        LOOKUP_SESSIONS as u64,
        "one lookup per ambiguous create"
    );
    app.stop().await;
}

/// One API call as the sandbox received it (`GET /sandbox/calls`).
#[derive(Debug, Clone)]
struct DiditCall {
    endpoint: String,
    /// Unix ms of its arrival at the sandbox.
    at: u64,
    vendor_data: Option<String>,
}

async fn didit_calls(app: &TestApp) -> Vec<DiditCall> {
    app.sandbox_calls()
        .await
        .iter()
        .map(|c| DiditCall {
            endpoint: c["endpoint"].as_str().unwrap_or_default().to_owned(),
            at: c["received_ms"].as_u64().unwrap_or_default(),
            vendor_data: c["vendor_data"].as_str().map(str::to_owned),
        })
        .collect()
}

/// The arrival times of one endpoint's calls (for one person, when given), oldest first.
fn arrivals(calls: &[DiditCall], endpoint: &str, person: Option<&str>) -> Vec<u64> {
    calls
        .iter()
        .filter(|c| c.endpoint == endpoint)
        .filter(|c| person.is_none_or(|p| c.vendor_data.as_deref() == Some(p)))
        .map(|c| c.at)
        .collect()
}

/// The most of `times` (sorted) inside any window of `window` ms.
fn peak_in_window(times: &[u64], window: u64) -> usize {
    times
        .iter()
        .enumerate()
        .map(|(i, start)| {
            times[i..]
                .iter()
                .take_while(|t| **t < start + window)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// Each request's `vendor_data` → its intent's time (`intent_at_ms`, Unix ms): when the
/// worker recorded that a create was about to leave.
async fn intents(app: &TestApp) -> HashMap<String, u64> {
    let mut c = app.redis.connection().await;
    let keys: Vec<String> = redis::AsyncCommands::keys(&mut c, "kyc:request:*")
        .await
        .expect("request keys");
    let mut intents = HashMap::new();
    for key in keys.iter().filter(|k| !k.ends_with(":lock")) {
        let (person, at): (Option<String>, Option<u64>) = redis::cmd("HMGET")
            .arg(key)
            .arg("vendor_data")
            .arg("intent_at_ms")
            .query_async(&mut c)
            .await
            .expect("request record");
        if let (Some(person), Some(at)) = (person, at) {
            intents.insert(person, at);
        }
    }
    intents
}

/// Sessions stay `Not Started` through the late-create and outage scenarios: no webhook
/// can announce (and adopt) a session before the start job's own lookup finds it.
fn sessions_that_stay_open(env: &[(&str, &str)]) -> AppOptions {
    AppOptions {
        complete_after: Duration::from_secs(120),
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Default::default()
    }
}

/// One Didit session per request: every person's create reached Didit, none was answered
/// with a session Didit already had (its reuse), and each request announced its own.
async fn assert_one_session_each(app: &TestApp, name: &str, n: usize) -> Vec<DiditCall> {
    let stats = app.sandbox_stats().await;
    assert_eq!(
        stats["sessions_created"], n,
        "[chaos {name}] sessions: {stats}"
    );
    assert_eq!(
        stats["sessions_reused"], 0,
        "[chaos {name}] a create was sent again for a session Didit had made"
    );
    let calls = didit_calls(app).await;
    for i in 0..n {
        let person = format!("{name}-user-{i}");
        assert!(
            !arrivals(&calls, "session_create", Some(&person)).is_empty(),
            "[chaos {name}] {person}: no create reached Didit"
        );
    }
    let sessions: std::collections::HashSet<String> = app
        .events()
        .await
        .into_iter()
        .filter(|e| e["type"] == "kyc.session.created")
        .map(|e| e["session_id"].clone())
        .collect();
    assert_eq!(sessions.len(), n, "[chaos {name}] one session per request");
    calls
}

#[tokio::test]
async fn chaos_a_create_didit_answers_after_the_request_timeout_is_found_not_created_again() {
    // Arrange: a request timeout of 1 s; Didit stores each session (listed at once) but
    // answers its create only after 3 s, so the worker gives up on every create Didit
    // carried out.
    let timeout = Duration::from_secs(1);
    let app = spawn_app(sessions_that_stay_open(&[(
        "KYC__DIDIT__REQUEST_TIMEOUT",
        "1s",
    )]))
    .await;
    app.sandbox_control(serde_json::json!({
        "action": "answer_creates_late", "count": LOOKUP_SESSIONS, "ms": 3000,
    }))
    .await;

    // Act
    enqueue_few(&app, "late", LOOKUP_SESSIONS).await;
    app.wait_events("kyc.session.created", LOOKUP_SESSIONS)
        .await;

    // Assert: each person's one create was found by a lookup sent no sooner than the
    // request timeout after the create reached Didit.
    let calls = assert_one_session_each(&app, "late", LOOKUP_SESSIONS).await;
    for i in 0..LOOKUP_SESSIONS {
        let person = format!("late-user-{i}");
        let creates = arrivals(&calls, "session_create", Some(&person));
        assert_eq!(creates.len(), 1, "{person}: created again: {creates:?}");
        let lookups = arrivals(&calls, "session_list", Some(&person));
        let first = *lookups.first().expect("a lookup found the session");
        let after = Duration::from_millis(first.saturating_sub(creates[0]));
        assert!(
            first >= creates[0] + timeout.as_millis() as u64,
            "{person}: looked up {after:?} after its create (request timeout {timeout:?})"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn chaos_a_create_cut_off_after_didit_stored_it_is_looked_up_only_after_the_request_timeout()
{
    // Arrange: Didit stores each session, then breaks the connection before the answer's
    // body; the request timeout (7 s) is longer than the 4-6 s wait after a transport
    // failure, so only the ambiguous-create floor keeps the lookup back.
    let timeout = Duration::from_secs(7);
    let app = spawn_app(sessions_that_stay_open(&[(
        "KYC__DIDIT__REQUEST_TIMEOUT",
        "7s",
    )]))
    .await;
    app.sandbox_control(serde_json::json!({
        "action": "answer_creates_late", "count": LOOKUP_SESSIONS, "reset": true,
    }))
    .await;

    // Act
    enqueue_few(&app, "cutoff", LOOKUP_SESSIONS).await;
    app.wait_events("kyc.session.created", LOOKUP_SESSIONS)
        .await;

    // Assert: one create each, left after its intent; the lookup that found it came no
    // sooner than the request timeout after that intent.
    let calls = assert_one_session_each(&app, "cutoff", LOOKUP_SESSIONS).await;
    let intents = intents(&app).await;
    let mut closest = Duration::MAX;
    for i in 0..LOOKUP_SESSIONS {
        let person = format!("cutoff-user-{i}");
        let intent = intents[&person];
        let creates = arrivals(&calls, "session_create", Some(&person));
        assert_eq!(creates.len(), 1, "{person}: created again: {creates:?}");
        assert!(creates[0] >= intent, "{person}: a create before its intent");
        let first = *arrivals(&calls, "session_list", Some(&person))
            .first()
            .expect("a lookup found the session");
        assert!(
            first >= intent + timeout.as_millis() as u64,
            "{person}: looked up {}ms after its intent (request timeout {timeout:?})",
            first.saturating_sub(intent)
        );
        closest = closest.min(Duration::from_millis(first.saturating_sub(creates[0])));
    }
    eprintln!(
        "[chaos cutoff] earliest lookup {:.2}s after its create (request timeout {:.0}s)",
        closest.as_secs_f64(),
        timeout.as_secs_f64()
    );
    app.stop().await;
}

/// Start jobs waiting through an outage.
const OUTAGE_JOBS: usize = 40;

#[tokio::test]
async fn chaos_during_an_outage_of_500s_lookups_keep_to_the_low_priority_share_of_reads() {
    // Arrange: a GET budget of 40 per 2 s window, of which low-priority work (lookups) may
    // use half. Didit answers every call 500, so every create is ambiguous and every retry
    // is a lookup: 40 of them due within the same 2 s (4-6 s after the creates failed).
    let (window_ms, low_share) = (2000, 20);
    let app = spawn_app(sessions_that_stay_open(&[
        ("KYC__RATELIMIT__WINDOW", "2s"),
        ("KYC__RATELIMIT__MARGIN", "500ms"),
        ("KYC__RATELIMIT__GET", "40"),
        ("KYC__RATELIMIT__LOW_SHARE", "0.5"),
    ]))
    .await;
    app.sandbox_control(serde_json::json!({"action": "set_error_rate", "rate": 1.0}))
        .await;

    // Act: the outage lasts until the jobs have looked up two shares' worth; then Didit
    // recovers and every request gets its session.
    enqueue_few(&app, "outage", OUTAGE_JOBS).await;
    eventually(
        "lookups during the outage",
        Duration::from_secs(30),
        || async {
            let lookups = arrivals(&didit_calls(&app).await, "session_list", None).len();
            (lookups >= 2 * low_share).then_some(())
        },
    )
    .await;
    app.sandbox_control(serde_json::json!({"action": "set_error_rate", "rate": 0.0}))
        .await;
    app.wait_events("kyc.session.created", OUTAGE_JOBS).await;

    // Assert: in no window did lookups take more than their share, though they wanted the
    // whole budget; the failed creates were not repeated blindly.
    let calls = assert_one_session_each(&app, "outage", OUTAGE_JOBS).await;
    let lookups = arrivals(&calls, "session_list", None);
    let peak = peak_in_window(&lookups, window_ms);
    eprintln!(
        "[chaos outage 500] lookups={} peak_in_{window_ms}ms={peak} (share {low_share})",
        lookups.len()
    );
    assert!(
        peak <= low_share,
        "{peak} lookups in one {window_ms} ms window; their share is {low_share}"
    );
    assert!(
        peak >= low_share / 2,
        "lookups never pressed on their share ({peak}): the scenario tests nothing"
    );
    app.stop().await;
}

#[tokio::test]
async fn chaos_during_a_429_outage_creates_cost_no_lookup_and_a_retry_after_expiry_releases_jobs_spread_out(
) {
    // Arrange: Didit answers every call 429 with `Retry-After: 2`; every refused create
    // pauses creates fleet-wide for 2 s.
    let retry_after_ms = 2000;
    let jitter_window_ms = retry_after_ms / 2;
    let app = spawn_app(sessions_that_stay_open(&[])).await;
    app.sandbox_control(serde_json::json!({
        "action": "set_error_rate", "rate": 1.0, "status": 429, "retry_after_s": 2,
    }))
    .await;
    let delayed = kyc_worker::queue::QueueKeys::new("kyc", "start").delayed;
    let mut c = app.redis.connection().await;

    // Act: Didit throttles through at least three `Retry-After` expiries after the first
    // wave of creates; meanwhile the due times of the waiting jobs are sampled.
    enqueue_few(&app, "throttled-outage", OUTAGE_JOBS).await;
    let mut widest_ms = 0;
    let until = Instant::now() + Duration::from_secs(30);
    let released = loop {
        let due: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(&delayed)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut c)
            .await
            .expect("delayed start jobs");
        if due.len() >= OUTAGE_JOBS / 2 {
            let times: Vec<u64> = due.iter().map(|(_, at)| *at as u64).collect();
            let spread = times.iter().max().unwrap_or(&0) - times.iter().min().unwrap_or(&0);
            widest_ms = widest_ms.max(spread);
        }
        let creates = arrivals(&didit_calls(&app).await, "session_create", None);
        let first = creates.first().copied().unwrap_or(u64::MAX);
        // The first wave: creates sent before the first 429 paused the fleet.
        let later: Vec<u64> = creates
            .iter()
            .copied()
            .filter(|t| *t >= first.saturating_add(retry_after_ms / 2))
            .collect();
        if later.len() >= 3 && later.last() >= Some(&(first + 3 * retry_after_ms)) {
            break later;
        }
        assert!(
            Instant::now() < until,
            "three Retry-After expiries within 30 s (creates: {creates:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    app.sandbox_control(serde_json::json!({"action": "set_error_rate", "rate": 0.0}))
        .await;
    app.wait_events("kyc.session.created", OUTAGE_JOBS).await;

    // Assert: no lookup (a 429 is refused unprocessed); the waiting jobs' retries were
    // spread over the jitter window, and each expiry let a few creates through, not all.
    let calls = assert_one_session_each(&app, "throttled-outage", OUTAGE_JOBS).await;
    assert_eq!(
        arrivals(&calls, "session_list", None).len(),
        0,
        "a create Didit throttled needs no lookup"
    );
    let burst = peak_in_window(&released, 100);
    eprintln!(
        "[chaos outage 429] creates after the first wave={} largest burst in 100ms={burst} \
         widest spread of due times={widest_ms}ms (jitter window {jitter_window_ms}ms)",
        released.len()
    );
    assert!(
        widest_ms >= jitter_window_ms / 4,
        "the waiting jobs were due within {widest_ms} ms of each other: released together"
    );
    assert!(
        burst <= OUTAGE_JOBS / 8,
        "{burst} creates reached Didit within 100 ms after a Retry-After expiry"
    );
    app.stop().await;
}
