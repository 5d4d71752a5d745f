//! `kyc-worker events tail`: operators read the outcome stream back the way consumers see
//! it — the latest events, everything from an entry id or a time on, and new ones as they
//! are published — without joining a consumer group.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use kyc_worker::{domain::StartRequest, queue::now_ms};
use serde_json::Value;

use crate::helpers::{eventually, kyc_worker_binary, spawn_app, AppOptions, TestApp, DEADLINE};

async fn start(app: &TestApp, vendor_data: &str) -> String {
    app.producer()
        .await
        .start_kyc(StartRequest {
            vendor_data: vendor_data.into(),
            sandbox_scenario: Some("approve".into()),
            ..Default::default()
        })
        .await
        .expect("enqueue")
        .to_string()
}

fn lines(out: &std::process::Output) -> Vec<String> {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn json_lines(out: &std::process::Output) -> Vec<Value> {
    lines(out)
        .iter()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

#[tokio::test]
async fn tail_prints_the_latest_events_or_from_an_id_or_a_time_on() {
    let app = spawn_app(AppOptions::default()).await;
    let requests = [
        start(&app, "tail-person-1").await,
        start(&app, "tail-person-2").await,
    ];
    eventually("both decided", DEADLINE, || async {
        let decided = app
            .events()
            .await
            .iter()
            .filter(|e| e["type"] == "kyc.session.decided")
            .count();
        (decided == 2).then_some(())
    })
    .await;
    let stored = app.events().await;
    assert_eq!(stored.len(), 4, "created and decided for each");

    // The default form: one line per event, oldest first, no personal data.
    let text = lines(&app.cli(&["events", "tail"]));
    assert_eq!(text.len(), 4, "{text:?}");
    for request in &requests {
        assert_eq!(
            text.iter().filter(|l| l.contains(request.as_str())).count(),
            2
        );
    }
    assert!(text[0].contains("kyc.session.created"), "{text:?}");
    assert!(text.iter().all(|l| !l.contains("tail-person")), "{text:?}");

    // JSON carries every field, the entry id and the stream; -n keeps the latest.
    let all = json_lines(&app.cli(&["events", "tail", "--json"]));
    assert_eq!(all.len(), 4);
    assert!(all.iter().all(|e| e["stream"] == "kyc:events"));
    assert!(all.iter().any(|e| e["vendor_data"] == "tail-person-1"));
    let latest = json_lines(&app.cli(&["events", "tail", "--json", "-n", "1"]));
    assert_eq!(latest.len(), 1);
    assert_eq!(latest[0]["id"], all[3]["id"]);

    // From an entry id on, inclusive; from a time on.
    let from = all[1]["id"].as_str().expect("id");
    let tail = json_lines(&app.cli(&["events", "tail", "--json", "--from", from]));
    let ids: Vec<&Value> = tail.iter().map(|e| &e["id"]).collect();
    assert_eq!(ids, all[1..].iter().map(|e| &e["id"]).collect::<Vec<_>>());
    assert_eq!(
        json_lines(&app.cli(&["events", "tail", "--json", "--since", "1h"])).len(),
        4
    );
    let later = format!("{}-0", now_ms() + 3_600_000);
    assert!(json_lines(&app.cli(&["events", "tail", "--json", "--from", &later])).is_empty());

    // A malformed id is a usage error naming the flag.
    let out = app.cli(&["events", "tail", "--from", "yesterday"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--from") && stderr.contains("stream entry id"),
        "{stderr}"
    );
    app.stop().await;
}

#[tokio::test]
async fn tail_follow_prints_events_as_they_are_published() {
    let app = spawn_app(AppOptions::default()).await;
    let first = start(&app, "follow-person-1").await;
    eventually("the first is decided", DEADLINE, || async {
        app.events()
            .await
            .iter()
            .any(|e| e["request_id"] == first && e["type"] == "kyc.session.decided")
            .then_some(())
    })
    .await;

    let mut child = Command::new(kyc_worker_binary())
        .args(["events", "tail", "--json", "--follow", "-n", "1"])
        .env_clear()
        .env("KYC_ENV", "none")
        .envs(app.settings_env.iter())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("events tail --follow");
    let stdout = child.stdout.take().expect("stdout");
    // A thread reads the pipe; the test awaits its lines, so the fleet keeps running.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(serde_json::from_str(&line).expect("JSON")).is_err() {
                return;
            }
        }
    });
    let shown = tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .ok()
        .flatten()
        .expect("the latest event is printed");
    assert_eq!(shown["request_id"], first.as_str());
    assert_eq!(shown["type"], "kyc.session.decided");

    let second = start(&app, "follow-person-2").await;
    let deadline = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    while seen.len() < 2 && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            Ok(Some(event)) => seen.push(event),
            Ok(None) => break,
            Err(_) => {}
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let kinds: Vec<(&Value, &Value)> = seen
        .iter()
        .map(|e| (&e["request_id"], &e["type"]))
        .collect();
    assert_eq!(
        kinds,
        [
            (
                &Value::from(second.as_str()),
                &Value::from("kyc.session.created")
            ),
            (
                &Value::from(second.as_str()),
                &Value::from("kyc.session.decided")
            ),
        ],
        "only new events, in order"
    );
    app.stop().await;
}
