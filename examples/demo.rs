//! `make demo`: the whole fleet on this machine, end to end, on the embedded defaults.
//!
//! Starts a private redis-server on a free port, `kyc-worker sandbox` with its webhooks
//! pointed at the worker, and `kyc-worker run`; enqueues 20 verifications across the sandbox's
//! scenarios; shows a live progress bar (on a terminal), then a table of outcomes; stops what it started.
//! Run with `cargo run --release --example demo` after `cargo build --release`.

use std::{
    collections::HashMap,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use didit_sandbox::ports::free_port;
use kyc_worker::{domain::StartRequest, producer::Producer, settings::Settings};

const SCENARIOS: [&str; 10] = [
    "approve",
    "decline_document_expired",
    "decline_face_mismatch",
    "decline_liveness",
    "decline_aml_hit",
    "review_face_match_borderline",
    "review_high_scores_warning",
    "review_aml_possible_match",
    "approve_underage",
    "approve",
];

/// Children killed on drop, whatever happens.
struct Processes(Vec<(&'static str, Child)>);

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in self.0.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|p| p.parent())
        .context("cannot locate target directory")?;
    let bin = dir.join("kyc-worker");
    if !bin.exists() {
        bail!(
            "{} not found: run `cargo build --release` first (make demo does)",
            bin.display()
        );
    }
    Ok(bin)
}

async fn wait_http(url: &str, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if reqwest::get(url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{what} did not come up at {url}")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bin = binary()?;
    let dir = std::env::temp_dir().join(format!("kyc-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (redis_port, sandbox_port, app_port) = (free_port()?, free_port()?, free_port()?);
    let mut procs = Processes(Vec::new());

    let redis = Command::new("redis-server")
        .args([
            "--port",
            &redis_port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start redis-server (apt-get install redis-server)")?;
    procs.0.push(("redis-server", redis));
    let redis_url = format!("redis://127.0.0.1:{redis_port}");

    let sandbox = Command::new(&bin)
        .args([
            "sandbox",
            "--port",
            &sandbox_port.to_string(),
            "--complete-after-ms",
            "3000",
        ])
        .args([
            "--webhook-url",
            &format!("http://127.0.0.1:{app_port}/webhooks/didit"),
        ])
        .stdout(Stdio::null())
        .spawn()?;
    procs.0.push(("sandbox", sandbox));
    let base_url = format!("http://127.0.0.1:{sandbox_port}");
    wait_http(&format!("{base_url}/sandbox/stats"), "the sandbox").await?;

    let env = [
        ("KYC__REDIS__URL", redis_url.clone()),
        ("KYC__DIDIT__BASE_URL", base_url.clone()),
        ("KYC__DIDIT__AUTH_BASE_URL", format!("{base_url}/auth/v2")),
        ("KYC__HTTP__HOST", "127.0.0.1".to_owned()),
        ("KYC__HTTP__PORT", app_port.to_string()),
        ("KYC__LOG__LEVEL", "warn".to_owned()),
    ];
    let worker = Command::new(&bin)
        .arg("run")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .spawn()?;
    procs.0.push(("kyc-worker run", worker));
    wait_http(
        &format!("http://127.0.0.1:{app_port}/healthz"),
        "kyc-worker run",
    )
    .await?;
    println!("redis {redis_url}, sandbox {base_url}, worker http://127.0.0.1:{app_port}");

    let settings = Settings::load_from(&kyc_worker::settings::Sources {
        config_dir: Some(dir.clone()),
        env: Some(
            env.iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        ),
    })?;
    let producer = Producer::connect(&settings).await?;
    let mut requests = HashMap::new();
    let started = Instant::now();
    for i in 0..20 {
        let scenario = SCENARIOS[i % SCENARIOS.len()];
        let vendor_data = format!("demo-user-{i:02}-{scenario}");
        let id = producer
            .start_kyc(StartRequest {
                vendor_data: vendor_data.clone(),
                sandbox_scenario: Some(scenario.to_owned()),
                ..Default::default()
            })
            .await?;
        requests.insert(id.to_string(), vendor_data);
    }

    let client = redis::Client::open(redis_url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let deadline = Instant::now() + Duration::from_secs(90);
    // Drawn on stderr, and only when it is a terminal.
    let progress = indicatif::ProgressBar::new(requests.len() as u64);
    progress.set_style(indicatif::ProgressStyle::with_template(
        "{msg}, decided {bar:20} {pos:>2}/{len}  {per_sec}  ETA {eta}  {elapsed}",
    )?);
    let outcomes = loop {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg("kyc:events")
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await?;
        let mut created = 0;
        let mut outcomes: HashMap<String, (String, String, f64)> = HashMap::new();
        for entry in reply.ids {
            let field = |k: &str| {
                entry
                    .map
                    .get(k)
                    .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
                    .unwrap_or_default()
            };
            let at = kyc_worker::queue::now_ms() as f64 / 1000.0;
            match field("type").as_str() {
                "kyc.session.created" => created += 1,
                "kyc.session.decided" | "kyc.session.expired" | "kyc.session.failed" => {
                    outcomes.entry(field("request_id")).or_insert((
                        field("status"),
                        field("decided_by"),
                        at,
                    ));
                }
                _ => {}
            }
        }
        progress.set_message(format!("sessions created {created:>2}/20"));
        progress.set_position(outcomes.len() as u64);
        if outcomes.len() >= requests.len() {
            progress.finish();
            break outcomes;
        }
        if Instant::now() > deadline {
            progress.abandon();
            bail!("not every verification finished within 90 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let start_s = kyc_worker::queue::now_ms() as f64 / 1000.0 - started.elapsed().as_secs_f64();
    let mut rows: Vec<_> = requests.iter().collect();
    rows.sort_by(|a, b| a.1.cmp(b.1));
    println!(
        "\n{:<42} {:<12} {:<12} {:>8}",
        "vendor_data", "status", "decided_by", "seconds"
    );
    for (request_id, vendor_data) in rows {
        if let Some((status, decided_by, at)) = outcomes.get(request_id) {
            println!(
                "{vendor_data:<42} {status:<12} {decided_by:<12} {:>8.1}",
                at - start_s
            );
        }
    }
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
