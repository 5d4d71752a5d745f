//! Production Redis topologies, each with real `redis-server` processes on free ports: TLS with
//! a CA generated here (and mutual TLS), the pipeline under the minimal ACL user of
//! docs/redis.md, Sentinel with a failover in the middle of a run, the start-up errors that
//! name a setting (exit 2), sentinels down at start, and an evicting Redis.

use std::{
    collections::HashMap,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use kyc_worker::domain::StartRequest;

use crate::helpers::{
    eventually, free_port, kyc_worker_binary, spawn_app, AppOptions, TestApp, DEADLINE,
};

/// A `redis-server` (or sentinel) of one test, killed when dropped.
struct Server {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Server {
    /// Starts `redis-server` with `args` (its working directory is a fresh temp dir) and waits
    /// until `port` accepts connections.
    async fn start(port: u16, args: &[String]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut server = Server {
            child: None,
            port,
            dir,
        };
        server.spawn(args).await;
        server
    }

    async fn spawn(&mut self, args: &[String]) {
        let child = Command::new("redis-server")
            .args(args)
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let port = self.port;
        eventually("redis-server listens", DEADLINE, || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
    }

    /// A plain server on its own port, with extra arguments.
    async fn plain(extra: &[&str]) -> Server {
        let port = free_port();
        let mut args = vec![
            "--port".to_owned(),
            port.to_string(),
            "--bind".to_owned(),
            "127.0.0.1".to_owned(),
            "--save".to_owned(),
            String::new(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Server::start(port, &args).await
    }

    /// A sentinel on `port` monitoring the master at `master_port` as `name` (with the
    /// master's password, when it has one).
    async fn sentinel(port: u16, name: &str, master_port: u16, auth_pass: Option<&str>) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nsentinel monitor {name} 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds {name} 1000\nsentinel failover-timeout {name} 5000\n{}",
                auth_pass
                    .map(|p| format!("sentinel auth-pass {name} {p}\n"))
                    .unwrap_or_default()
            ),
        )
        .expect("sentinel.conf");
        let mut server = Server {
            child: None,
            port,
            dir,
        };
        server
            .spawn(&[conf.display().to_string(), "--sentinel".to_owned()])
            .await;
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn admin(&self, url: &str) -> redis::aio::MultiplexedConnection {
        redis::Client::open(url)
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("admin connection")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made with `openssl`.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .expect("openssl runs");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            let (key, crt, subject) = (
                format!("{ca}.key"),
                format!("{ca}.crt"),
                format!("/CN={ca}"),
            );
            let mut args = vec!["req", "-x509"];
            args.extend(ec);
            args.extend([
                "-keyout", &key, "-out", &crt, "-days", "2", "-subj", &subject,
            ]);
            openssl(&args);
        }
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .expect("ext");
        std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("ext");
        for leaf in ["server", "client"] {
            let mut args = vec!["req"];
            args.extend(ec);
            let key = format!("{leaf}.key");
            let csr = format!("{leaf}.csr");
            args.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=127.0.0.1"]);
            openssl(&args);
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{leaf}.crt"),
                "-days",
                "2",
                "-extfile",
                &format!("{leaf}.ext"),
            ]);
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// A TLS-only `redis-server`; `require_client_cert`: mutual TLS.
    async fn server(&self, require_client_cert: bool) -> Server {
        let port = free_port();
        let args: Vec<String> = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--tls-cert-file",
            &self.path("server.crt"),
            "--tls-key-file",
            &self.path("server.key"),
            "--tls-ca-cert-file",
            &self.path("ca.crt"),
            "--tls-auth-clients",
            if require_client_cert { "yes" } else { "no" },
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        Server::start(port, &args).await
    }
}

fn request(n: usize) -> StartRequest {
    StartRequest {
        request_id: Some(format!("req-{n}")),
        vendor_data: format!("user-{n}"),
        sandbox_scenario: Some("approve".into()),
        ..Default::default()
    }
}

/// The outcome stream as the fleet sees it: through a connection made from the app's own
/// `[redis]` settings (TLS, ACL user, Sentinel and all).
async fn events(app: &TestApp) -> Vec<HashMap<String, String>> {
    let connector = kyc_worker::queue::Connector::new(&app.settings().redis).expect("connector");
    let mut conn = connector.connect();
    let Ok(reply) = redis::cmd("XRANGE")
        .arg("kyc:events")
        .arg("-")
        .arg("+")
        .query_async::<redis::streams::StreamRangeReply>(&mut conn)
        .await
    else {
        return Vec::new();
    };
    reply
        .ids
        .into_iter()
        .map(|e| {
            e.map
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        redis::from_redis_value_ref::<String>(v).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .collect()
}

/// Decided events per request id, once `n` requests have one.
async fn wait_decided(app: &TestApp, n: usize, within: Duration) -> HashMap<String, usize> {
    eventually(&format!("{n} requests decided"), within, || async {
        let mut per_request: HashMap<String, usize> = HashMap::new();
        for e in events(app).await {
            if e.get("type").map(String::as_str) == Some("kyc.session.decided") {
                *per_request.entry(e["request_id"].clone()).or_default() += 1;
            }
        }
        (per_request.len() >= n).then_some(per_request)
    })
    .await
}

/// Enqueues `n` requests with the app's producer (through its `[redis]` settings).
async fn enqueue(app: &TestApp, range: std::ops::Range<usize>) {
    let producer = app.producer().await;
    for n in range {
        producer.start_kyc(request(n)).await.expect("enqueue");
    }
}

/// Runs `kyc-worker queue stats` with the app's settings and `env` on top.
fn queue_stats(app: &TestApp, env: &[(&str, String)]) -> std::process::Output {
    Command::new(kyc_worker_binary())
        .args(["queue", "stats"])
        .env_clear()
        .env("KYC_ENV", "none")
        .envs(app.settings_env.iter())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run kyc-worker")
}

fn assert_exit_2_naming(out: &std::process::Output, key: &str, secret: Option<&str>) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{key}: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(key), "names {key}: {stderr}");
    if let Some(secret) = secret {
        assert!(!stderr.contains(secret), "no secret: {stderr}");
    }
}

async fn app_with(env: Vec<(&str, String)>, in_process: bool) -> TestApp {
    spawn_app(AppOptions {
        env: env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        in_process,
        ..Default::default()
    })
    .await
}

#[tokio::test]
async fn tls_with_a_private_ca_and_mutual_tls_runs_the_pipeline() {
    let pki = Pki::new();
    let redis = pki.server(true).await;
    let app = app_with(
        vec![
            (
                "KYC__REDIS__URL",
                format!("rediss://127.0.0.1:{}", redis.port),
            ),
            ("KYC__REDIS__TLS_CA_FILE", pki.path("ca.crt")),
            ("KYC__REDIS__TLS_CERT_FILE", pki.path("client.crt")),
            ("KYC__REDIS__TLS_KEY_FILE", pki.path("client.key")),
        ],
        true,
    )
    .await;

    enqueue(&app, 0..10).await;

    let decided = wait_decided(&app, 10, Duration::from_secs(30)).await;
    assert!(decided.values().all(|n| *n == 1), "{decided:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_wrong_ca_or_a_missing_client_certificate_exits_2_naming_the_setting() {
    let pki = Pki::new();
    let mutual = pki.server(true).await;
    let app = app_with(Vec::new(), false).await;
    let url = format!("rediss://127.0.0.1:{}", mutual.port);

    let wrong_ca = queue_stats(
        &app,
        &[
            ("KYC__REDIS__URL", url.clone()),
            ("KYC__REDIS__TLS_CA_FILE", pki.path("other-ca.crt")),
            ("KYC__REDIS__TLS_CERT_FILE", pki.path("client.crt")),
            ("KYC__REDIS__TLS_KEY_FILE", pki.path("client.key")),
        ],
    );
    assert_exit_2_naming(&wrong_ca, "KYC__REDIS__TLS_CA_FILE", None);

    let no_client_cert = queue_stats(
        &app,
        &[
            ("KYC__REDIS__URL", url.clone()),
            ("KYC__REDIS__TLS_CA_FILE", pki.path("ca.crt")),
        ],
    );
    assert_exit_2_naming(&no_client_cert, "KYC__REDIS__TLS_CERT_FILE", None);

    let missing_ca = queue_stats(
        &app,
        &[
            ("KYC__REDIS__URL", url),
            ("KYC__REDIS__TLS_CA_FILE", pki.path("nowhere.crt")),
        ],
    );
    assert_exit_2_naming(&missing_ca, "KYC__REDIS__TLS_CA_FILE", None);
}

/// The `ACL SETUSER` line of docs/redis.md, with `password` for `PASSWORD`.
fn documented_acl(password: &str) -> Vec<String> {
    let doc =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/redis.md"))
            .expect("docs/redis.md");
    let line = doc
        .lines()
        .find(|l| l.starts_with("ACL SETUSER "))
        .expect("docs/redis.md states the ACL");
    line.split_whitespace()
        .skip(2)
        .map(|word| word.replace(">PASSWORD", &format!(">{password}")))
        .collect()
}

#[tokio::test]
async fn the_pipeline_runs_under_the_minimal_acl_user() {
    let redis = Server::plain(&["--requirepass", "admin-secret"]).await;
    let mut admin = redis
        .admin(&format!("redis://:admin-secret@127.0.0.1:{}", redis.port))
        .await;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(documented_acl("fleet-secret"))
        .query_async(&mut admin)
        .await
        .expect("the documented ACL is valid");
    let app = app_with(
        vec![
            ("KYC__REDIS__URL", redis.url()),
            ("KYC__REDIS__USERNAME", "kyc-fleet".to_owned()),
            ("KYC__REDIS__PASSWORD", "fleet-secret".to_owned()),
        ],
        true,
    )
    .await;

    enqueue(&app, 0..20).await;
    let decided = wait_decided(&app, 20, Duration::from_secs(30)).await;

    assert!(decided.values().all(|n| *n == 1), "{decided:?}");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("kyc_redis_eviction_policy_ok 1"),
        "INFO is allowed to the minimal user"
    );
    let denied: redis::RedisResult<()> = {
        let client = redis::Client::open(format!(
            "redis://kyc-fleet:fleet-secret@127.0.0.1:{}",
            redis.port
        ))
        .expect("url");
        let mut c = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        redis::cmd("SET")
            .arg("other:key")
            .arg("x")
            .query_async(&mut c)
            .await
    };
    assert!(denied.is_err(), "the user is limited to the prefix");

    let out = queue_stats(
        &app,
        &[("KYC__REDIS__PASSWORD", "not-the-password".to_owned())],
    );
    assert_exit_2_naming(&out, "KYC__REDIS__PASSWORD", Some("not-the-password"));
    app.stop().await;
}

/// A master, one replica and one sentinel monitoring them as `kyc`.
struct SentinelSet {
    master: Server,
    _replica: Server,
    sentinel: Server,
}

impl SentinelSet {
    async fn start() -> SentinelSet {
        let master = Server::plain(&["--appendonly", "no"]).await;
        let replica = Server::plain(&["--replicaof", "127.0.0.1", &master.port.to_string()]).await;
        let sentinel = Server::sentinel(free_port(), "kyc", master.port, None).await;
        let set = SentinelSet {
            master,
            _replica: replica,
            sentinel,
        };
        set.wait_for_replica().await;
        set
    }

    /// Until the sentinel knows a healthy replica (a failover needs one).
    async fn wait_for_replica(&self) {
        let url = self.sentinel.url();
        eventually("the sentinel sees the replica", DEADLINE, || {
            let url = url.clone();
            async move {
                let mut c = redis::Client::open(url)
                    .ok()?
                    .get_multiplexed_async_connection()
                    .await
                    .ok()?;
                let replicas: Vec<HashMap<String, String>> = redis::cmd("SENTINEL")
                    .arg("REPLICAS")
                    .arg("kyc")
                    .query_async(&mut c)
                    .await
                    .ok()?;
                replicas
                    .iter()
                    .any(|r| {
                        r.get("flags").is_some_and(|f| !f.contains("down"))
                            && r.get("master-link-status").map(String::as_str) == Some("ok")
                    })
                    .then_some(())
            }
        })
        .await;
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("KYC__REDIS__MODE", "sentinel".to_owned()),
            (
                "KYC__REDIS__NODES",
                format!("127.0.0.1:{}", self.sentinel.port),
            ),
            ("KYC__REDIS__SENTINEL_MASTER", "kyc".to_owned()),
        ]
    }

    /// The master's port as the sentinel names it now.
    async fn master_port(&self) -> Option<u16> {
        let mut c = redis::Client::open(self.sentinel.url())
            .ok()?
            .get_multiplexed_async_connection()
            .await
            .ok()?;
        let (_, port): (String, u16) = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg("kyc")
            .query_async(&mut c)
            .await
            .ok()?;
        Some(port)
    }
}

#[tokio::test]
async fn sentinel_failover_in_the_middle_of_200_sessions_loses_and_doubles_nothing() {
    let set = SentinelSet::start().await;
    let app = app_with(set.env(), true).await;

    enqueue(&app, 0..200).await;
    wait_decided(&app, 50, Duration::from_secs(60)).await;
    let mut sentinel = set.sentinel.admin(&set.sentinel.url()).await;
    let _: () = redis::cmd("SENTINEL")
        .arg("FAILOVER")
        .arg("kyc")
        .query_async(&mut sentinel)
        .await
        .expect("failover starts");
    eventually(
        "the sentinel names the replica as master",
        DEADLINE,
        || async {
            set.master_port()
                .await
                .filter(|port| *port != set.master.port)
        },
    )
    .await;

    let decided = wait_decided(&app, 200, Duration::from_secs(90)).await;
    assert_eq!(decided.len(), 200);
    let doubled: Vec<_> = decided.iter().filter(|(_, n)| **n != 1).collect();
    assert!(doubled.is_empty(), "decided more than once: {doubled:?}");
    assert_eq!(app.sandbox_stats().await["sessions_created"], 200);
    let ready = reqwest::get(app.url("/readyz"))
        .await
        .expect("readyz")
        .status();
    assert_eq!(ready, 200, "ready again on the new master");
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_master_name_or_a_node_that_is_no_sentinel_exits_2_naming_the_setting() {
    let set = SentinelSet::start().await;
    let app = app_with(set.env(), false).await;

    let out = queue_stats(
        &app,
        &[("KYC__REDIS__SENTINEL_MASTER", "no-such-master".to_owned())],
    );

    assert_exit_2_naming(&out, "KYC__REDIS__SENTINEL_MASTER", None);
    let not_a_sentinel = queue_stats(
        &app,
        &[(
            "KYC__REDIS__NODES",
            format!("127.0.0.1:{}", set.master.port),
        )],
    );
    assert_exit_2_naming(&not_a_sentinel, "KYC__REDIS__NODES", None);
    let ok = queue_stats(&app, &[]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[tokio::test]
async fn with_the_sentinels_down_at_start_the_process_waits_unready_and_proceeds_when_they_come_up()
{
    let master = Server::plain(&["--requirepass", "data-secret-never-logged"]).await;
    let sentinel_port = free_port();
    let app = app_with(
        vec![
            ("KYC__REDIS__MODE", "sentinel".to_owned()),
            ("KYC__REDIS__NODES", format!("127.0.0.1:{sentinel_port}")),
            ("KYC__REDIS__SENTINEL_MASTER", "kyc".to_owned()),
            (
                "KYC__REDIS__PASSWORD",
                "data-secret-never-logged".to_owned(),
            ),
        ],
        false,
    )
    .await;
    let log = app.sandbox_dir_log("worker.log");
    let _worker = app.spawn_worker(&[], Some(&log));

    eventually("the process serves /healthz", DEADLINE, || async {
        let r = reqwest::get(app.url("/healthz")).await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    let ready = reqwest::get(app.url("/readyz"))
        .await
        .expect("readyz")
        .status();
    assert_eq!(ready, 503, "not ready without Redis");
    let warning = eventually("a warning naming the sentinels", DEADLINE, || async {
        let text = std::fs::read_to_string(&log).ok()?;
        text.contains(&format!("127.0.0.1:{sentinel_port}"))
            .then_some(text)
    })
    .await;
    assert!(warning.contains("unreachable"), "{warning}");
    assert!(!warning.contains("data-secret-never-logged"), "{warning}");

    let _sentinel = Server::sentinel(
        sentinel_port,
        "kyc",
        master.port,
        Some("data-secret-never-logged"),
    )
    .await;
    eventually(
        "ready once the sentinels answer",
        Duration::from_secs(30),
        || async {
            let r = reqwest::get(app.url("/readyz")).await.ok()?;
            (r.status() == 200).then_some(())
        },
    )
    .await;
    enqueue(&app, 0..3).await;
    let decided = wait_decided(&app, 3, Duration::from_secs(30)).await;
    assert!(decided.values().all(|n| *n == 1), "{decided:?}");
}

#[tokio::test]
async fn an_evicting_redis_is_a_loud_warning_and_the_metric_at_zero() {
    let redis = Server::plain(&["--maxmemory-policy", "allkeys-lru"]).await;
    let app = app_with(vec![("KYC__REDIS__URL", redis.url())], false).await;
    let log = app.sandbox_dir_log("worker.log");
    let _worker = app.spawn_worker(&[], Some(&log));

    eventually("kyc_redis_eviction_policy_ok 0", DEADLINE, || async {
        let text = reqwest::get(app.url("/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .any(|l| l == "kyc_redis_eviction_policy_ok 0")
            .then_some(())
    })
    .await;
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("allkeys-lru"), "{text}");
    assert!(text.contains("noeviction"), "{text}");
}

impl TestApp {
    /// A path for a child process's log, kept as long as the test's temp dir.
    fn sandbox_dir_log(&self, name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kyc-topology-{}", self.port));
        std::fs::create_dir_all(&dir).expect("log dir");
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        path
    }
}
