//! Test harness shared by every integration test.
//!
//! Each test starts what it needs: its own `redis-server` on a free port (never the shared
//! 6379, so nothing here can flush someone else's data) and its own sandbox. Waiting is always
//! polling with a deadline, never a bare sleep.

use std::{
    future::Future,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

/// How long any eventual condition may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `check` until it returns `Some`, or panics with `what` after `deadline`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Logs of the code under test, shown only when `TEST_LOG` is set (zero2prod's habit).
pub fn init_test_logs() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        if std::env::var("TEST_LOG").is_ok() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
                .with_test_writer()
                .try_init();
        }
    });
}

/// A free TCP port on the loopback interface, below the ephemeral range (see
/// [`didit_sandbox::ports`]).
pub fn free_port() -> u16 {
    didit_sandbox::ports::free_port().expect("a free port")
}

/// A private `redis-server` for one test, stopped when dropped.
pub struct TestRedis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    extra_args: Vec<String>,
}

impl TestRedis {
    /// Starts a `redis-server` without persistence.
    pub async fn start() -> TestRedis {
        Self::start_with(&["--save", "", "--appendonly", "no"]).await
    }

    /// Starts a `redis-server` with extra arguments (e.g. AOF settings).
    pub async fn start_with(args: &[&str]) -> TestRedis {
        let dir = tempfile::tempdir().expect("tempdir for redis");
        let mut redis = TestRedis {
            child: None,
            port: free_port(),
            dir,
            extra_args: args.iter().map(|s| s.to_string()).collect(),
        };
        redis.spawn().await;
        redis
    }

    /// Starts the server on its port and data directory (after [`TestRedis::kill`]).
    pub async fn spawn(&mut self) {
        init_test_logs();
        let child = Command::new(redis_server_binary())
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts (install it with `apt-get install redis-server`)");
        self.child = Some(child);
        let url = self.url();
        eventually("redis-server to answer PING", DEADLINE, || {
            let url = url.clone();
            async move {
                let client = redis::Client::open(url).ok()?;
                let mut conn = client.get_multiplexed_async_connection().await.ok()?;
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .ok()
            }
        })
        .await;
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A connection for the test's own reads and seeding, with the fleet's patience (redis-rs
    /// gives up on a connect after 1 s and a reply after 500 ms by default: too short on a
    /// busy CI host, e.g. for a large seeding pipeline).
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(10)))
            .set_response_timeout(Some(Duration::from_secs(30)));
        let client = redis::Client::open(self.url()).expect("redis url");
        // A restarted server (the chaos suite) may still be loading its AOF on a busy host:
        // keep trying until a deadline rather than failing on the first refusal.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match client
                .get_multiplexed_async_connection_with_config(&config)
                .await
            {
                Ok(c) => return c,
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "test redis not accepting connections yet");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("connect to test redis: {e}"),
            }
        }
    }

    /// Kills the server with SIGKILL (no shutdown save).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data directory.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn redis_server_binary() -> String {
    std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned())
}

/// The `kyc-worker` binary built for this test run.
pub fn kyc_worker_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kyc-worker"))
}

/// The HTTP intake's bearer token in tests.
pub const TEST_API_TOKEN: &str = "test-api-token-0123456789";

/// How a test wants its fleet process.
#[derive(Debug, Clone)]
pub struct AppOptions {
    /// Didit delivers webhooks to the app (else the app polls).
    pub webhooks: bool,
    /// Sandbox: creation → final status.
    pub complete_after: Duration,
    /// Extra settings as `KYC__…` variables.
    pub env: Vec<(String, String)>,
    /// Run the fleet in this process (else the test runs `kyc-worker run` children).
    pub in_process: bool,
    /// The sandbox loses every webhook (the app still expects them).
    pub drop_webhooks: bool,
    /// Sandbox rate limits, e.g. `get=5/1s`.
    pub sandbox_limits: Vec<&'static str>,
    /// Apply the default rule pack (off by default, so outcomes are Didit's).
    pub rules: bool,
    /// The sandbox's API key and the app's `KYC__DIDIT__API_KEY` (else the defaults).
    pub api_key: Option<String>,
    /// The sandbox's webhook secret and the app's `KYC__DIDIT__WEBHOOK_SECRET`.
    pub webhook_secret: Option<String>,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            webhooks: true,
            complete_after: Duration::from_millis(300),
            env: Vec::new(),
            in_process: true,
            drop_webhooks: false,
            sandbox_limits: Vec::new(),
            rules: false,
            api_key: None,
            webhook_secret: None,
        }
    }
}

/// One fleet process in this test, with its own Redis and sandbox.
pub struct TestApp {
    pub redis: TestRedis,
    pub sandbox: didit_sandbox::SandboxHandle,
    pub port: u16,
    pub settings_env: std::collections::HashMap<String, String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    pub fn settings(&self) -> kyc_worker::settings::Settings {
        kyc_worker::settings::Settings::load_from(&kyc_worker::settings::Sources {
            config_dir: Some(std::env::temp_dir().join("kyc-worker-no-overlay")),
            env: Some(self.settings_env.clone()),
        })
        .expect("test settings")
    }

    pub async fn producer(&self) -> kyc_worker::producer::Producer {
        kyc_worker::producer::Producer::connect(&self.settings())
            .await
            .expect("producer")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every event on the outcome stream, oldest first, as field maps.
    pub async fn events(&self) -> Vec<std::collections::HashMap<String, String>> {
        self.event_entries()
            .await
            .into_iter()
            .map(|(_, fields)| fields)
            .collect()
    }

    /// Every entry of the outcome stream, oldest first: its id (`<ms>-<seq>`) and fields.
    pub async fn event_entries(&self) -> Vec<(String, std::collections::HashMap<String, String>)> {
        let mut c = self.redis.connection().await;
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg("kyc:events")
            .arg("-")
            .arg("+")
            .query_async(&mut c)
            .await
            .expect("xrange events");
        reply
            .ids
            .into_iter()
            .map(|e| {
                let fields = e
                    .map
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            redis::from_redis_value_ref::<String>(v).unwrap_or_default(),
                        )
                    })
                    .collect();
                (e.id, fields)
            })
            .collect()
    }

    /// Waits until `n` events of `kind` are on the stream; returns them.
    pub async fn wait_events(
        &self,
        kind: &str,
        n: usize,
    ) -> Vec<std::collections::HashMap<String, String>> {
        eventually(
            &format!("{n} {kind} events"),
            Duration::from_secs(30),
            || async {
                let found: Vec<_> = self
                    .events()
                    .await
                    .into_iter()
                    .filter(|e| e["type"] == kind)
                    .collect();
                (found.len() >= n).then_some(found)
            },
        )
        .await
    }

    pub async fn sandbox_stats(&self) -> serde_json::Value {
        reqwest::get(format!("{}sandbox/stats", self.sandbox.base_url()))
            .await
            .expect("stats")
            .json()
            .await
            .expect("stats json")
    }

    /// The sandbox's log of API calls (`GET /sandbox/calls`), oldest first.
    pub async fn sandbox_calls(&self) -> Vec<serde_json::Value> {
        let log: serde_json::Value =
            reqwest::get(format!("{}sandbox/calls", self.sandbox.base_url()))
                .await
                .expect("calls")
                .json()
                .await
                .expect("calls json");
        log["calls"].as_array().cloned().unwrap_or_default()
    }

    pub async fn sandbox_control(&self, body: serde_json::Value) {
        let status = reqwest::Client::new()
            .post(format!("{}sandbox/control", self.sandbox.base_url()))
            .json(&body)
            .send()
            .await
            .expect("control")
            .status();
        assert!(status.is_success(), "sandbox control {body} → {status}");
    }

    /// The fleet's `/metrics` page, as Prometheus scrapes it.
    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .expect("scrape /metrics")
            .text()
            .await
            .expect("the /metrics text")
    }

    /// Runs the `kyc-worker` binary with this app's settings (e.g. an operator command).
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(kyc_worker_binary())
            .args(args)
            .env_clear()
            .env("KYC_ENV", "none")
            .envs(self.settings_env.iter())
            .output()
            .expect("run kyc-worker")
    }

    /// Starts a `kyc-worker run` child process of this app's fleet on its own HTTP port,
    /// with extra settings; its output goes nowhere.
    pub fn spawn_fleet_process(&self, extra: &[(&str, String)]) -> ChildGuard {
        let mut env = vec![("KYC__HTTP__PORT", free_port().to_string())];
        env.extend(extra.iter().cloned());
        self.spawn_worker(&env, None)
    }

    /// Starts `kyc-worker run` as a child process with this app's settings, `env` on top
    /// (e.g. its own `KYC__HTTP__PORT`); its stdout and stderr go to `log` (else nowhere).
    pub fn spawn_worker(
        &self,
        env: &[(&str, String)],
        log: Option<&std::path::Path>,
    ) -> ChildGuard {
        let mut cmd = Command::new(kyc_worker_binary());
        cmd.arg("run")
            .env_clear()
            .env("KYC_ENV", "none")
            .envs(self.settings_env.iter())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        match log {
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .expect("worker log file");
                let err = file.try_clone().expect("log file handle");
                cmd.stdout(Stdio::from(file)).stderr(Stdio::from(err));
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        ChildGuard(cmd.spawn().expect("spawn kyc-worker run"))
    }

    /// Stops the fleet process gracefully and checks it exited cleanly.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            let result = tokio::time::timeout(Duration::from_secs(30), handle).await;
            assert!(
                matches!(result, Ok(Ok(Ok(())))),
                "the app stopped with {result:?}"
            );
        }
    }
}

/// Starts Redis, the sandbox (webhooks to the app when asked) and the fleet in this process.
pub async fn spawn_app(options: AppOptions) -> TestApp {
    let redis = TestRedis::start().await;
    let port = free_port();
    let mut sandbox_config = didit_sandbox::SandboxConfig::for_tests(options.complete_after);
    sandbox_config.min_expiration = Duration::from_secs(1);
    sandbox_config.limits = options
        .sandbox_limits
        .iter()
        .map(|l| l.parse().expect("limit spec"))
        .collect();
    if let Some(key) = &options.api_key {
        sandbox_config.api_key = key.clone();
    }
    if let Some(secret) = &options.webhook_secret {
        sandbox_config.webhook_secret = secret.clone();
    }
    if options.webhooks && !options.drop_webhooks {
        sandbox_config.webhook_url = Some(
            format!("http://127.0.0.1:{port}/webhooks/didit")
                .parse()
                .expect("url"),
        );
    }
    let sandbox = didit_sandbox::Sandbox::start(sandbox_config)
        .await
        .expect("sandbox");
    let base = sandbox.base_url().to_string();
    let mut env: std::collections::HashMap<String, String> = [
        ("KYC__REDIS__URL", redis.url()),
        ("KYC__HTTP__HOST", "127.0.0.1".to_owned()),
        ("KYC__HTTP__PORT", port.to_string()),
        (
            "KYC__DIDIT__BASE_URL",
            base.trim_end_matches('/').to_owned(),
        ),
        ("KYC__DIDIT__WEBHOOKS", options.webhooks.to_string()),
        ("KYC__LOG__LEVEL", "warn".to_owned()),
        // With webhooks the safety-net poll must not be what decides in a test.
        ("KYC__POLL__WEBHOOK_INITIAL", "20s".to_owned()),
        ("KYC__POLL__POLLING_INITIAL", "100ms".to_owned()),
        ("KYC__POLL__POLLING_MAX", "300ms".to_owned()),
        ("KYC__POLL__PAUSE_RECHECK", "200ms".to_owned()),
        ("KYC__POLL__REVIEW_INTERVAL", "30s".to_owned()),
        ("KYC__QUEUE__WAKE_BOUND", "500ms".to_owned()),
        ("KYC__QUEUE__RECLAIM_AFTER", "3s".to_owned()),
        ("KYC__QUEUE__FETCH_BLOCK", "500ms".to_owned()),
        ("KYC__WORKER__SHUTDOWN_TIMEOUT", "5s".to_owned()),
        ("KYC__DIDIT__REQUEST_TIMEOUT", "3s".to_owned()),
        ("KYC__HTTP__API_TOKEN", TEST_API_TOKEN.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if let Some(key) = &options.api_key {
        env.insert("KYC__DIDIT__API_KEY".to_owned(), key.clone());
    }
    if let Some(secret) = &options.webhook_secret {
        env.insert("KYC__DIDIT__WEBHOOK_SECRET".to_owned(), secret.clone());
    }
    if !options.rules {
        env.insert("KYC__RULES__FILE".to_owned(), String::new());
    }
    env.extend(options.env.iter().cloned());
    let mut app = TestApp {
        redis,
        sandbox,
        port,
        settings_env: env,
        stop: None,
        handle: None,
    };
    if !options.in_process {
        return app;
    }
    let settings = app.settings();
    let rules = kyc_worker::rules::RuleSet::from_settings(&settings.rules).expect("rules");
    let application = kyc_worker::startup::Application::build(settings, rules)
        .await
        .expect("app builds");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    app.handle = Some(tokio::spawn(application.run_until(async move {
        let _ = rx.await;
    })));
    app.stop = Some(tx);
    let health = app.url("/healthz");
    eventually("the app answers /healthz", DEADLINE, || {
        let health = health.clone();
        async move {
            reqwest::get(health)
                .await
                .ok()
                .filter(|r| r.status().is_success())
        }
    })
    .await;
    app
}

/// A child process killed when dropped, so a failing test leaves no fleet process behind.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl std::ops::Deref for ChildGuard {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A schema of `spec` (an OpenAPI 3.0 document) as JSON Schema, ready for `jsonschema`, to
/// check real answers against the document that promises them.
pub fn openapi_to_json_schema(
    spec: &serde_json::Value,
    schema: &serde_json::Value,
) -> serde_json::Value {
    to_json_schema(spec, schema, 0)
}

/// OpenAPI 3.0 → JSON Schema: `nullable: true` becomes a type union (or `anyOf` with null),
/// `$ref`s to components are inlined, `example`s dropped.
fn to_json_schema(
    spec: &serde_json::Value,
    schema: &serde_json::Value,
    depth: usize,
) -> serde_json::Value {
    assert!(depth < 32, "runaway $ref recursion in the OpenAPI document");
    let serde_json::Value::Object(map) = schema else {
        return schema.clone();
    };
    let nullable = map.get("nullable") == Some(&serde_json::Value::Bool(true));
    let mut out = if let Some(reference) = map.get("$ref").and_then(serde_json::Value::as_str) {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .expect("only component refs are used");
        match to_json_schema(spec, &spec["components"]["schemas"][name], depth + 1) {
            serde_json::Value::Object(m) => m,
            other => panic!("component {name} is not a schema: {other}"),
        }
    } else {
        let mut out = serde_json::Map::new();
        for (key, value) in map {
            let converted = match key.as_str() {
                "nullable" | "example" | "examples" => continue,
                "properties" => serde_json::Value::Object(
                    value
                        .as_object()
                        .expect("properties is an object")
                        .iter()
                        .map(|(name, s)| (name.clone(), to_json_schema(spec, s, depth + 1)))
                        .collect(),
                ),
                "items" | "additionalProperties" | "not" => to_json_schema(spec, value, depth + 1),
                "oneOf" | "anyOf" | "allOf" => serde_json::Value::Array(
                    value
                        .as_array()
                        .expect("a list of schemas")
                        .iter()
                        .map(|s| to_json_schema(spec, s, depth + 1))
                        .collect(),
                ),
                _ => value.clone(),
            };
            out.insert(key.clone(), converted);
        }
        out
    };
    if nullable {
        if let Some(serde_json::Value::Array(choices)) = out.get_mut("enum") {
            choices.push(serde_json::Value::Null);
        }
        match out.get("type").cloned() {
            Some(serde_json::Value::String(t)) => {
                out.insert("type".into(), serde_json::json!([t, "null"]));
            }
            _ => {
                return serde_json::json!({"anyOf": [serde_json::Value::Object(out), {"type": "null"}]})
            }
        }
    }
    serde_json::Value::Object(out)
}
