//! The README's quickstart, run by hand as a reader would, so it cannot drift: `redis-server`,
//! `kyc-worker sandbox`, `kyc-worker run`, a consumer group on the event stream (created
//! before anything is published), `kyc-worker enqueue`, then `XREADGROUP` until the session is
//! created and decided. Only the ports differ from the README: free ones, given through the
//! settings' environment variables and the sandbox's `--port`.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use crate::helpers::{eventually, free_port, kyc_worker_binary, ChildGuard, DEADLINE};

/// `redis-cli -p PORT ARGS…`: its output, one line per reply element (redis-cli prints raw
/// replies when its output is not a terminal).
fn redis_cli(port: u16, args: &[&str]) -> Vec<String> {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("redis-cli runs (apt-get install redis-tools)");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A `kyc-worker` command with only the quickstart's settings (nothing from the test's own
/// environment), run from an empty directory as a reader's shell might be.
fn kyc_worker(dir: &Path, env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(kyc_worker_binary());
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    cmd
}

#[tokio::test]
async fn the_readme_quickstart_creates_and_decides_a_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (redis_port, sandbox_port, http_port) = (free_port(), free_port(), free_port());
    let settings = [
        ("KYC__REDIS__URL", format!("redis://127.0.0.1:{redis_port}")),
        ("KYC__HTTP__PORT", http_port.to_string()),
        (
            "KYC__DIDIT__BASE_URL",
            format!("http://127.0.0.1:{sandbox_port}"),
        ),
    ];

    // redis-server --port P
    let _redis = ChildGuard(
        Command::new(std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into()))
            .current_dir(dir.path())
            .args(["--port", &redis_port.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts"),
    );
    eventually("redis answers", DEADLINE, || async {
        let ping = Command::new("redis-cli")
            .args(["-p", &redis_port.to_string(), "PING"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&ping.stdout)
            .contains("PONG")
            .then_some(())
    })
    .await;

    // kyc-worker sandbox --webhook-url http://127.0.0.1:8080/webhooks/didit
    let _sandbox = ChildGuard(
        kyc_worker(dir.path(), &[])
            .args([
                "sandbox",
                "--port",
                &sandbox_port.to_string(),
                "--webhook-url",
                &format!("http://127.0.0.1:{http_port}/webhooks/didit"),
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("the sandbox starts"),
    );
    // kyc-worker run
    let _fleet = ChildGuard(
        kyc_worker(dir.path(), &settings)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the fleet starts"),
    );
    let ready = format!("http://127.0.0.1:{http_port}/readyz");
    eventually("the fleet is ready", DEADLINE, || async {
        reqwest::get(&ready)
            .await
            .ok()
            .filter(|r| r.status().is_success())
    })
    .await;

    // The consumer group first, so it sees every event published after it.
    let created = redis_cli(
        redis_port,
        &["XGROUP", "CREATE", "kyc:events", "mygroup", "$", "MKSTREAM"],
    );
    assert_eq!(created, ["OK"]);

    // kyc-worker enqueue --vendor-data u-1
    let enqueued = kyc_worker(dir.path(), &settings)
        .args(["enqueue", "--vendor-data", "u-1"])
        .output()
        .expect("enqueue runs");
    assert!(enqueued.status.success(), "{enqueued:?}");
    let request_id = String::from_utf8_lossy(&enqueued.stdout).trim().to_owned();
    assert!(!request_id.is_empty(), "enqueue prints the request id");

    // XREADGROUP GROUP mygroup c1 COUNT 10 BLOCK 5000 STREAMS kyc:events >
    let mut types = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    while !types.iter().any(|t| t == "kyc.session.decided") {
        assert!(
            tokio::time::Instant::now() < until,
            "no decision within 60 s; events so far: {types:?}"
        );
        let lines = redis_cli(
            redis_port,
            &[
                "XREADGROUP",
                "GROUP",
                "mygroup",
                "c1",
                "COUNT",
                "10",
                "BLOCK",
                "5000",
                "STREAMS",
                "kyc:events",
                ">",
            ],
        );
        // Each entry prints its fields and values one per line: the value follows its name.
        let value_of = |i: usize| lines.get(i + 1).cloned().unwrap_or_default();
        for (i, line) in lines.iter().enumerate() {
            if line == "request_id" {
                assert_eq!(value_of(i), request_id, "an event of another request");
            }
            if line == "type" {
                types.push(value_of(i));
            }
        }
    }
    assert_eq!(
        types.first().map(String::as_str),
        Some("kyc.session.created"),
        "the link first: {types:?}"
    );
}
