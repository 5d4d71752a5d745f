//! Upgrading a running deployment: the keys an older release left in Redis are read by the
//! current binary, and every session they describe still ends with its events.
//!
//! `tests/fixtures/upgrade/*.json` are dumps of every key under the prefix, taken from a
//! fleet of an older release with sessions in each state a deployment holds at any moment:
//! waiting for the user, In Review at Didit, decided, held by one of our rules, and
//! cancelled. Each fixture is made by [`regenerate_fixture`] on the release it describes
//! (see `tests/fixtures/upgrade/README.md`) and never rewritten afterwards, so a layout
//! change that forgets the old keys fails here.
//!
//! Restoring shifts time: the dump holds absolute unix-ms times (zset scores of delayed
//! jobs, record fields, audit steps, stream ids), which would be long past when the test
//! runs. Every 13-digit number within 400 days of the dump's time, wherever it appears, is
//! moved by (now − dump time), as if the old fleet had stopped a moment ago; lifetimes are
//! restored as the time to live they had left.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::helpers::{eventually, spawn_app, AppOptions, TestApp};
use kyc_worker::{
    domain::StartRequest,
    jobs::{OperatorAction, OperatorDecision},
    queue::Queue,
};

/// The fixture made from the release before the session lifecycle became one record per
/// session with one script per transition.
const BEFORE_LIFECYCLE: &str = "before-lifecycle.json";

/// Numbers this close to the dump's time are times, and move with it.
const TIME_WINDOW_MS: i64 = 400 * 86_400 * 1000;

/// The sandbox finishes nothing on its own in these tests: each session moves when the
/// test says so.
const NEVER: Duration = Duration::from_secs(3_600);

#[derive(Debug, Serialize, Deserialize)]
struct Fixture {
    /// What made it, in words.
    made_by: String,
    prefix: String,
    /// Unix ms when the keys were read.
    dumped_at_ms: i64,
    sessions: Vec<FixtureSession>,
    keys: Vec<DumpedKey>,
}

/// One verification in the dump and what Didit knew of its session then.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FixtureSession {
    /// `waiting`, `in_review`, `decided`, `held` or `cancelled`.
    state: String,
    request_id: String,
    session_id: Uuid,
    vendor_data: String,
    scenario: String,
    didit_status: String,
    /// The events published for it before the dump: `type status decided_by`.
    events: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DumpedKey {
    key: String,
    /// Time to live left when dumped, in ms; `None` without one.
    ttl_ms: Option<i64>,
    value: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Value {
    String {
        value: String,
    },
    Hash {
        fields: BTreeMap<String, String>,
    },
    Set {
        members: Vec<String>,
    },
    Zset {
        members: Vec<(String, f64)>,
    },
    List {
        items: Vec<String>,
    },
    Stream {
        entries: Vec<(String, Vec<(String, String)>)>,
        /// (group, last delivered id); dumped with nothing pending.
        groups: Vec<(String, String)>,
    },
}

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/upgrade")
        .join(name)
}

fn now_ms() -> i64 {
    kyc_worker::queue::now_ms() as i64
}

/// Every 13-digit number in `text` within [`TIME_WINDOW_MS`] of `from` moved by `by`.
fn shift_times(text: &str, from: i64, by: i64) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            let digits = &text[start..i];
            match digits.parse::<i64>() {
                Ok(t) if digits.len() == 13 && (t - from).abs() <= TIME_WINDOW_MS => {
                    out.push_str(&(t + by).to_string());
                }
                _ => out.push_str(digits),
            }
        } else {
            let c = text[i..].chars().next().unwrap_or_default();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// Writes the fixture's keys into an empty database, times moved to now.
async fn restore(conn: &mut redis::aio::MultiplexedConnection, fixture: &Fixture) {
    let (from, by) = (fixture.dumped_at_ms, now_ms() - fixture.dumped_at_ms);
    let shift = |s: &str| shift_times(s, from, by);
    for dumped in &fixture.keys {
        let key = shift(&dumped.key);
        let mut pipe = redis::pipe();
        match &dumped.value {
            Value::String { value } => {
                pipe.set(&key, shift(value));
            }
            Value::Hash { fields } => {
                let fields: Vec<(String, String)> =
                    fields.iter().map(|(f, v)| (f.clone(), shift(v))).collect();
                pipe.hset_multiple(&key, &fields);
            }
            Value::Set { members } => {
                let members: Vec<String> = members.iter().map(|m| shift(m)).collect();
                pipe.sadd(&key, members);
            }
            Value::Zset { members } => {
                for (member, score) in members {
                    let score = shift(&format!("{score:.0}"))
                        .parse::<f64>()
                        .unwrap_or(*score);
                    pipe.zadd(&key, shift(member), score);
                }
            }
            Value::List { items } => {
                let items: Vec<String> = items.iter().map(|i| shift(i)).collect();
                pipe.rpush(&key, items);
            }
            Value::Stream { entries, groups } => {
                for (id, fields) in entries {
                    let fields: Vec<(String, String)> =
                        fields.iter().map(|(f, v)| (f.clone(), shift(v))).collect();
                    pipe.xadd(&key, shift(id), &fields);
                }
                for (group, last) in groups {
                    pipe.cmd("XGROUP")
                        .arg("CREATE")
                        .arg(&key)
                        .arg(group)
                        .arg(shift(last))
                        .arg("MKSTREAM");
                }
            }
        }
        if let Some(ttl) = dumped.ttl_ms {
            pipe.pexpire(&key, ttl.max(1));
        }
        pipe.query_async::<()>(conn)
            .await
            .unwrap_or_else(|e| panic!("restore {key}: {e}"));
    }
}

/// Every key under `prefix`, with its lifetime and value.
async fn dump(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) -> Vec<DumpedKey> {
    let mut keys: Vec<String> = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .expect("scan");
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    keys.sort();
    let mut dumped = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(conn)
            .await
            .expect("type");
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(conn)
            .await
            .expect("pttl");
        let value = match kind.as_str() {
            "string" => Value::String {
                value: redis::cmd("GET")
                    .arg(&key)
                    .query_async(conn)
                    .await
                    .expect("get"),
            },
            "hash" => Value::Hash {
                fields: redis::cmd("HGETALL")
                    .arg(&key)
                    .query_async(conn)
                    .await
                    .expect("hgetall"),
            },
            "set" => {
                let mut members: Vec<String> = redis::cmd("SMEMBERS")
                    .arg(&key)
                    .query_async(conn)
                    .await
                    .expect("smembers");
                members.sort();
                Value::Set { members }
            }
            "zset" => Value::Zset {
                members: redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .query_async(conn)
                    .await
                    .expect("zrange"),
            },
            "list" => Value::List {
                items: redis::cmd("LRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query_async(conn)
                    .await
                    .expect("lrange"),
            },
            "stream" => {
                let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                    .arg(&key)
                    .arg("-")
                    .arg("+")
                    .query_async(conn)
                    .await
                    .expect("xrange");
                let entries = reply
                    .ids
                    .into_iter()
                    .map(|e| {
                        let mut fields: Vec<(String, String)> = e
                            .map
                            .iter()
                            .map(|(k, v)| {
                                (
                                    k.clone(),
                                    redis::from_redis_value_ref::<String>(v).expect("utf-8"),
                                )
                            })
                            .collect();
                        fields.sort();
                        (e.id, fields)
                    })
                    .collect();
                let info: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(&key)
                    .query_async(conn)
                    .await
                    .expect("xinfo groups");
                let groups = info
                    .groups
                    .into_iter()
                    .map(|g| {
                        assert_eq!(g.pending, 0, "{key}: dump with nothing in flight");
                        (g.name, g.last_delivered_id)
                    })
                    .collect();
                Value::Stream { entries, groups }
            }
            other => panic!("{key} is a {other}: not dumped"),
        };
        dumped.push(DumpedKey {
            key,
            ttl_ms: (ttl >= 0).then_some(ttl),
            value,
        });
    }
    dumped
}

/// The events of one request: `type status decided_by`, oldest first.
fn events_of(events: &[HashMap<String, String>], request_id: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.get("request_id").map(String::as_str) == Some(request_id))
        .map(|e| {
            format!(
                "{} {} {}",
                e["type"],
                e.get("status").map_or("", String::as_str),
                e.get("decided_by").map_or("", String::as_str)
            )
            .trim_end()
            .to_owned()
        })
        .collect()
}

async fn control(app: &TestApp, body: serde_json::Value) {
    app.sandbox_control(body).await;
}

/// A queue handle on the app's Redis.
async fn queue(app: &TestApp) -> Queue {
    Queue::connect(&app.redis.url(), "kyc", Default::default())
        .await
        .expect("queue")
}

/// Polls until no job of any queue is ready or in flight.
async fn settled(app: &TestApp) {
    let q = queue(app).await;
    eventually("every queue is idle", crate::helpers::DEADLINE, || async {
        for name in ["start", "poll", "operator", "erase"] {
            let s = q.stats(name).await.ok()?;
            if s.ready + s.in_flight > 0 {
                return None;
            }
        }
        Some(())
    })
    .await;
}

/// The fleet that writes the fixture, and the one that restores it: webhooks on, the
/// fixture's rules (one review rule, so a session can be held by it).
fn fixture_app_options() -> AppOptions {
    AppOptions {
        complete_after: NEVER,
        env: vec![(
            "KYC__RULES__FILE".to_owned(),
            fixture_path("rules.toml").display().to_string(),
        )],
        ..Default::default()
    }
}

/// Writes `tests/fixtures/upgrade/before-lifecycle.json` from this build: one session in
/// each state, every key under the prefix. Run it only on the release the fixture is
/// named after: `cargo test --test it -- --ignored upgrade::regenerate_fixture`.
#[tokio::test]
#[ignore = "writes the fixture; run by hand on the release the fixture describes"]
async fn regenerate_fixture() {
    let app = spawn_app(fixture_app_options()).await;
    let producer = app.producer().await;
    // (state, scenario, what the test does at Didit before the dump)
    let plan = [
        ("waiting", "approve"),
        ("in_review", "review_face_match_borderline"),
        ("decided", "approve"),
        ("held", "approve_underage"),
        ("cancelled", "approve"),
    ];
    let mut sessions = Vec::new();
    for (i, (state, scenario)) in plan.iter().enumerate() {
        let vendor_data = format!("upgrade-fixture-{state}");
        let request = producer
            .start_kyc(StartRequest {
                vendor_data: vendor_data.clone(),
                sandbox_scenario: Some((*scenario).to_owned()),
                ..Default::default()
            })
            .await
            .expect("enqueue");
        let created = app.wait_events("kyc.session.created", i + 1).await;
        let session_id: Uuid = created
            .iter()
            .find(|e| e["request_id"] == request.as_str())
            .expect("its created event")["session_id"]
            .parse()
            .expect("a session uuid");
        match *state {
            "in_review" | "decided" | "held" => {
                control(
                    &app,
                    serde_json::json!({"action": "complete_session", "session_id": session_id}),
                )
                .await;
                let decided = eventually("its decided event", crate::helpers::DEADLINE, || async {
                    events_of(&app.events().await, request.as_str())
                        .into_iter()
                        .find(|e| e.starts_with("kyc.session.decided"))
                })
                .await;
                let want = match *state {
                    "decided" => "kyc.session.decided Approved didit",
                    "in_review" => "kyc.session.decided In Review didit",
                    _ => "kyc.session.decided In Review rule:underage_hold",
                };
                assert_eq!(decided, want, "{state}");
            }
            "cancelled" => {
                let out = app.cli(&["cancel", request.as_str()]);
                assert!(out.status.success(), "cancel: {out:?}");
            }
            _ => {}
        }
        sessions.push(FixtureSession {
            state: (*state).to_owned(),
            request_id: request.to_string(),
            session_id,
            vendor_data,
            scenario: (*scenario).to_owned(),
            didit_status: String::new(),
            events: Vec::new(),
        });
    }
    settled(&app).await;
    let client =
        didit::DiditClient::new(&app.settings().didit.client_config()).expect("didit client");
    let events = app.events().await;
    for session in &mut sessions {
        session.didit_status = client
            .decision(session.session_id)
            .await
            .expect("decision")
            .status
            .as_str()
            .to_owned();
        session.events = events_of(&events, &session.request_id);
    }
    let mut conn = app.redis.connection().await;
    let keys = dump(&mut conn, "kyc").await;
    let fixture = Fixture {
        made_by: format!(
            "upgrade::regenerate_fixture on kyc-worker {}",
            env!("CARGO_PKG_VERSION")
        ),
        prefix: "kyc".to_owned(),
        dumped_at_ms: now_ms(),
        sessions,
        keys,
    };
    let path = fixture_path(BEFORE_LIFECYCLE);
    std::fs::create_dir_all(path.parent().expect("a directory")).expect("mkdir");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&fixture).expect("json") + "\n",
    )
    .expect("write the fixture");
    app.stop().await;
}

/// The fixture's keys, restored into a fresh Redis, are finished by the current binary
/// (`kyc-worker run`) against a sandbox that knows their Didit sessions: the waiting one is
/// decided when the user finishes, the one In Review when Didit's staff approve it, the one
/// held by a rule when an operator releases it; the decided one and the cancelled one stay
/// as they were, with no second event.
#[tokio::test]
async fn every_session_of_the_layout_before_the_lifecycle_change_completes_with_its_events() {
    // Arrange: the old keys, and the sandbox sessions they point at.
    let fixture: Fixture = serde_json::from_str(
        &std::fs::read_to_string(fixture_path(BEFORE_LIFECYCLE)).expect("the fixture"),
    )
    .expect("a fixture");
    let app = spawn_app(AppOptions {
        in_process: false,
        ..fixture_app_options()
    })
    .await;
    for s in &fixture.sessions {
        control(
            &app,
            serde_json::json!({
                "action": "seed_session",
                "session_id": s.session_id,
                "vendor_data": s.vendor_data,
                "scenario": s.scenario,
                "status": s.didit_status,
            }),
        )
        .await;
    }
    let mut conn = app.redis.connection().await;
    restore(&mut conn, &fixture).await;
    let before = app.events().await;
    for s in &fixture.sessions {
        assert_eq!(
            events_of(&before, &s.request_id),
            s.events,
            "{} restored",
            s.state
        );
    }
    let session = |state: &str| {
        fixture
            .sessions
            .iter()
            .find(|s| s.state == state)
            .unwrap_or_else(|| panic!("the fixture has a {state} session"))
    };

    // Act: the current binary takes over, then each open session moves on.
    let _fleet = app.spawn_worker(&[("KYC__HTTP__PORT", app.port.to_string())], None);
    let ready = app.url("/readyz");
    eventually("the fleet is ready", crate::helpers::DEADLINE, || async {
        reqwest::get(&ready)
            .await
            .ok()
            .filter(|r| r.status().is_success())
    })
    .await;
    control(
        &app,
        serde_json::json!({"action": "complete_session", "session_id": session("waiting").session_id}),
    )
    .await;
    control(
        &app,
        serde_json::json!({
            "action": "set_status",
            "session_id": session("in_review").session_id,
            "status": "Approved",
        }),
    )
    .await;
    queue(&app)
        .await
        .push(&OperatorAction {
            session_id: session("held").session_id,
            action: OperatorDecision::Approve,
            operator: "upgrade-test".into(),
            note: None,
        })
        .await
        .expect("push the operator's decision");

    // Assert: one new event for each open session, none for the others.
    let expected: Vec<(&FixtureSession, Option<&str>)> = vec![
        (
            session("waiting"),
            Some("kyc.session.decided Approved didit"),
        ),
        (
            session("in_review"),
            Some("kyc.session.decided Approved didit"),
        ),
        (
            session("held"),
            Some("kyc.session.decided Approved operator:upgrade-test"),
        ),
        (session("decided"), None),
        (session("cancelled"), None),
    ];
    for (s, new) in &expected {
        let Some(new) = new else { continue };
        eventually(
            &format!("{} → {new}", s.state),
            Duration::from_secs(30),
            || async {
                let events = events_of(&app.events().await, &s.request_id);
                (events.len() > s.events.len()).then_some(())
            },
        )
        .await;
        let all = app.events().await;
        let events = events_of(&all, &s.request_id);
        assert_eq!(events[..s.events.len()], s.events[..], "{}", s.state);
        assert_eq!(
            events[s.events.len()..],
            [new.to_string()],
            "{}: {:#?}",
            s.state,
            all.iter()
                .filter(|e| e.get("request_id") == Some(&s.request_id))
                .collect::<Vec<_>>()
        );
    }
    settled(&app).await;
    let after = app.events().await;
    for (s, new) in &expected {
        let want: Vec<String> = s
            .events
            .iter()
            .cloned()
            .chain(new.map(str::to_owned))
            .collect();
        assert_eq!(events_of(&after, &s.request_id), want, "{}", s.state);
    }
    assert_eq!(
        after.len(),
        before.len() + 3,
        "three new events, no other: {after:?}"
    );
    // The status route reads the restored records too.
    for (state, status) in [
        ("waiting", "Approved"),
        ("in_review", "Approved"),
        ("held", "Approved"),
        ("decided", "Approved"),
        ("cancelled", "failed"),
    ] {
        let body: serde_json::Value = reqwest::Client::new()
            .get(app.url(&format!("/v1/verifications/{}", session(state).request_id)))
            .bearer_auth(crate::helpers::TEST_API_TOKEN)
            .send()
            .await
            .expect("the status route")
            .json()
            .await
            .expect("a JSON status");
        assert_eq!(body["status"], status, "{state}: {body}");
    }
}

#[test]
fn times_near_the_dump_move_and_other_numbers_stay() {
    let from = 1_764_633_600_000;
    let text = format!(
        "{{\"at_ms\":{from},\"n\":12,\"id\":\"{}-0\",\"far\":1000000000000,\"long\":17646336000001}}",
        from + 5
    );
    assert_eq!(
        shift_times(&text, from, 1_000),
        format!(
            "{{\"at_ms\":{},\"n\":12,\"id\":\"{}-0\",\"far\":1000000000000,\"long\":17646336000001}}",
            from + 1_000,
            from + 1_005
        )
    );
}
