//! One trace per verification: spans exported over OTLP/HTTP by two real `kyc-worker run`
//! processes, received by an OTLP receiver this test runs (decoding the protobuf export); a
//! caller's trace passed along without a receiver; the trace context a waiting session keeps.

use std::time::Duration;
#[cfg(feature = "otel")]
use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

#[cfg(feature = "otel")]
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
    common::v1::{any_value::Value as Any, KeyValue},
    trace::v1::span::SpanKind,
};
#[cfg(feature = "otel")]
use prost::Message;

use crate::helpers::{eventually, spawn_app, AppOptions};
#[cfg(feature = "otel")]
use crate::helpers::{free_port, TEST_API_TOKEN};

/// Every export request a receiver got, as the bytes on the wire.
#[cfg(feature = "otel")]
#[derive(Clone, Default)]
struct Receiver {
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    port: u16,
}

/// One received span with what the assertions read.
#[cfg(feature = "otel")]
#[derive(Debug, Clone)]
struct ReceivedSpan {
    trace_id: String,
    name: String,
    kind: i32,
    instance: String,
    attributes: HashMap<String, String>,
}

#[cfg(feature = "otel")]
fn text(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::BoolValue(b)) => b.to_string(),
        Some(Any::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

#[cfg(feature = "otel")]
impl Receiver {
    /// A small OTLP/HTTP receiver: `POST /v1/traces` with an `application/x-protobuf` body.
    async fn start() -> Self {
        let port = free_port();
        let receiver = Receiver {
            bodies: Arc::default(),
            port,
        };
        let bodies = receiver.bodies.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let bodies = bodies.clone();
                async move {
                    bodies.lock().expect("lock").push(body.to_vec());
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")],
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the receiver");
        tokio::spawn(async move { axum::serve(listener, app).await });
        receiver
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn bodies(&self) -> Vec<Vec<u8>> {
        self.bodies.lock().expect("lock").clone()
    }

    fn spans(&self) -> Vec<ReceivedSpan> {
        let mut spans = Vec::new();
        for body in self.bodies() {
            let request = ExportTraceServiceRequest::decode(body.as_slice())
                .expect("every export is a valid OTLP protobuf request");
            for resource_spans in request.resource_spans {
                let instance = resource_spans
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|kv| kv.key == "service.instance.id")
                    .map(text)
                    .unwrap_or_default();
                for scope in resource_spans.scope_spans {
                    for span in scope.spans {
                        spans.push(ReceivedSpan {
                            trace_id: hex::encode(&span.trace_id),
                            name: span.name.clone(),
                            kind: span.kind,
                            instance: instance.clone(),
                            attributes: span
                                .attributes
                                .iter()
                                .map(|kv| (kv.key.clone(), text(kv)))
                                .collect(),
                        });
                    }
                }
            }
        }
        spans
    }
}

/// Whether `needle` occurs in `haystack` as bytes.
#[cfg(feature = "otel")]
fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[cfg(feature = "otel")]
#[tokio::test]
async fn one_verification_is_one_trace_across_two_processes_with_no_personal_data() {
    // Arrange: a receiver, then two `kyc-worker run` processes exporting to it. Didit's
    // webhooks go to the first, the HTTP intake is asked on the second, so the trace must
    // cross processes.
    let receiver = Receiver::start().await;
    let api_key = "didit-api-key-never-exported-4711";
    let webhook_secret = "webhook-secret-never-exported-0815";
    let salt = "subject-salt-never-exported-2342";
    let app = spawn_app(AppOptions {
        in_process: false,
        api_key: Some(api_key.into()),
        webhook_secret: Some(webhook_secret.into()),
        env: vec![
            ("KYC__TELEMETRY__OTLP_ENDPOINT".into(), receiver.endpoint()),
            ("KYC__EVENTS__SUBJECT_SALT".into(), salt.into()),
            ("OTEL_SERVICE_NAME".into(), "kyc-under-test".into()),
        ],
        ..Default::default()
    })
    .await;
    let webhook_process = app.spawn_worker(&[("KYC__HTTP__PORT", app.port.to_string())], None);
    let intake_port = free_port();
    let intake_process = app.spawn_worker(&[("KYC__HTTP__PORT", intake_port.to_string())], None);
    for port in [app.port, intake_port] {
        eventually(
            "both processes answer /healthz",
            Duration::from_secs(30),
            || async move {
                reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            },
        )
        .await;
    }
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let vendor_data = "person-7f3a-vendor-data";
    let email = "ada.lovelace@example.org";
    let (first_name, last_name) = ("Augusta", "Byronova");

    // Act: one verification through the HTTP intake, decided after Didit's webhook.
    let accepted = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{intake_port}/v1/verifications"))
        .bearer_auth(TEST_API_TOKEN)
        .header("traceparent", &traceparent)
        .json(&serde_json::json!({
            "vendor_data": vendor_data,
            "contact_details": {"email": email},
            "expected_details": {"first_name": first_name, "last_name": last_name},
            "sandbox_scenario": "approve",
        }))
        .send()
        .await
        .expect("intake");
    assert_eq!(accepted.status(), 202);
    let reply: serde_json::Value = accepted.json().await.expect("json");
    let request_id = reply["request_id"].as_str().expect("request id").to_owned();
    let decided = app.wait_events("kyc.session.decided", 1).await;

    // Assert: the events carry the caller's trace id.
    let event = &decided[0];
    assert_eq!(event["request_id"], request_id);
    let data: serde_json::Value = serde_json::from_str(&event["data"]).expect("data");
    assert_eq!(data["trace_id"], trace_id, "decided event: {data}");
    let created = app.wait_events("kyc.session.created", 1).await;
    let created_data: serde_json::Value = serde_json::from_str(&created[0]["data"]).expect("data");
    assert_eq!(created_data["trace_id"], trace_id);
    let session_id = event["session_id"].clone();

    // Assert: spans of that one trace from both processes, the Didit calls among them.
    let spans = eventually(
        "the trace's spans from both processes, Didit's among them",
        Duration::from_secs(30),
        || {
            let receiver = receiver.clone();
            async move {
                let spans: Vec<ReceivedSpan> = receiver
                    .spans()
                    .into_iter()
                    .filter(|s| s.trace_id == trace_id)
                    .collect();
                let names: BTreeSet<&str> = spans.iter().map(|s| s.name.as_str()).collect();
                let instances: BTreeSet<&str> = spans.iter().map(|s| s.instance.as_str()).collect();
                let complete = [
                    "POST /v1/verifications",
                    "process start",
                    "POST /v3/session/",
                    "POST /webhooks/didit",
                    "process poll",
                    "GET /v3/session/{session_id}/decision/",
                ]
                .iter()
                .all(|n| names.contains(n));
                (complete && instances.len() >= 2).then_some(spans)
            }
        },
    )
    .await;
    let didit_calls: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.attributes.contains_key("url.template"))
        .collect();
    assert!(didit_calls.len() >= 2, "{spans:#?}");
    for call in &didit_calls {
        assert_eq!(call.kind, SpanKind::Client as i32, "{call:?}");
        assert!(
            call.attributes.contains_key("http.request.method")
                && call.attributes.contains_key("http.response.status_code"),
            "HTTP semantic conventions on {call:?}"
        );
        for value in call.attributes.values() {
            assert!(
                !value.contains(session_id.as_str()) && !value.contains('?'),
                "a Didit span carries the URL's ids or query: {call:?}"
            );
        }
    }
    let intake = spans
        .iter()
        .find(|s| s.name == "POST /v1/verifications")
        .expect("intake span");
    assert_eq!(intake.kind, SpanKind::Server as i32);

    // Assert: no exported byte names the person or a secret.
    let exported = receiver.bodies().concat();
    for secret in [
        vendor_data,
        email,
        first_name,
        last_name,
        api_key,
        webhook_secret,
        salt,
        TEST_API_TOKEN,
        &request_id,
    ] {
        assert!(
            !contains(&exported, secret),
            "{secret:?} was exported in a span"
        );
    }
    assert!(
        contains(&exported, "kyc-under-test"),
        "OTEL_SERVICE_NAME names the service"
    );
    drop(webhook_process);
    drop(intake_process);
}

#[tokio::test]
async fn without_a_receiver_an_intake_stream_traceparent_is_passed_along_to_the_events() {
    // Arrange: a fleet with no OTLP endpoint (nothing is exported from this process).
    let app = spawn_app(AppOptions::default()).await;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let mut redis = app.redis.connection().await;

    // Act: a producer in another language adds an entry with its traceparent.
    let _: String = redis::AsyncCommands::xadd(
        &mut redis,
        "kyc:intake",
        "*",
        &[
            ("vendor_data", "stream-person-1"),
            ("sandbox_scenario", "approve"),
            ("traceparent", &format!("00-{trace_id}-b7ad6b7169203331-01")),
        ],
    )
    .await
    .expect("xadd");
    let decided = app.wait_events("kyc.session.decided", 1).await;

    // Assert: the caller's trace id reaches the outcome event through the start job, the
    // waiting session, the webhook and the poll.
    let data: serde_json::Value = serde_json::from_str(&decided[0]["data"]).expect("data");
    assert_eq!(data["trace_id"], trace_id, "{data}");
    // The waiting session's trace context is dropped once the session is decided.
    let session_key = format!("kyc:session:{}", decided[0]["session_id"]);
    let kept: Option<String> = eventually(
        "the finished session's trace context dropped",
        Duration::from_secs(10),
        || {
            let mut redis = redis.clone();
            let session_key = session_key.clone();
            async move {
                let tp: Option<String> = redis::AsyncCommands::hget(&mut redis, &session_key, "tp")
                    .await
                    .expect("hget");
                tp.is_none().then_some(tp)
            }
        },
    )
    .await;
    assert_eq!(kept, None);
    app.stop().await;
}

/// Every key of the test Redis whose stored content contains `needle`, with the content, the
/// outcome stream left out (its events carry the trace id by design).
async fn keys_holding(
    redis: &mut redis::aio::MultiplexedConnection,
    needle: &str,
) -> Vec<(String, String)> {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(redis)
        .await
        .expect("keys");
    let mut holding = Vec::new();
    for key in keys.into_iter().filter(|k| k != "kyc:events") {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(redis)
            .await
            .expect("type");
        let command = match kind.as_str() {
            "string" => redis::cmd("GET").arg(&key).clone(),
            "hash" => redis::cmd("HGETALL").arg(&key).clone(),
            "zset" => redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .clone(),
            "set" => redis::cmd("SMEMBERS").arg(&key).clone(),
            "list" => redis::cmd("LRANGE").arg(&key).arg(0).arg(-1).clone(),
            "stream" => redis::cmd("XRANGE").arg(&key).arg("-").arg("+").clone(),
            // Gone between KEYS and TYPE.
            _ => continue,
        };
        let value: redis::Value = command.query_async(redis).await.expect("read a key");
        let content = format!("{value:?}");
        if content.contains(needle) {
            holding.push((key, content));
        }
    }
    holding
}

#[tokio::test]
async fn a_waiting_session_keeps_its_trace_context_once_and_a_finished_one_none() {
    // Arrange: sessions that wait for their user until the test completes them.
    let app = spawn_app(AppOptions {
        complete_after: Duration::from_secs(3600),
        ..Default::default()
    })
    .await;
    let trace_id = "5c2e8a0f6b9d4e71a3f0c8d2b4e6a917";
    let traceparent = format!("00-{trace_id}-3d1f7b2c9e4a6058-01");
    let mut redis = app.redis.connection().await;

    // Act: a verification in the caller's trace, left waiting.
    let _: String = redis::AsyncCommands::xadd(
        &mut redis,
        "kyc:intake",
        "*",
        &[
            ("vendor_data", "waiting-person-1"),
            ("sandbox_scenario", "approve"),
            ("traceparent", traceparent.as_str()),
        ],
    )
    .await
    .expect("xadd");
    let created = app.wait_events("kyc.session.created", 1).await;
    let session_id = created[0]["session_id"].clone();
    let session_key = format!("kyc:session:{session_id}");
    let poll_slot = format!("poll:{session_id}");
    let poll = eventually(
        "the waiting session's poll scheduled",
        Duration::from_secs(10),
        || {
            let mut redis = redis.clone();
            let poll_slot = poll_slot.clone();
            async move {
                let poll: Option<String> =
                    redis::AsyncCommands::hget(&mut redis, "kyc:queue:poll:payloads", &poll_slot)
                        .await
                        .expect("hget");
                poll
            }
        },
    )
    .await;

    // Assert: the trace context is stored once, in the session record, as the 55-byte
    // traceparent; the poll job's envelope has none.
    assert!(!poll.contains("\"tp\""), "{poll}");
    let holding = keys_holding(&mut redis, trace_id).await;
    let holders: Vec<&str> = holding.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(holders, [session_key.as_str()], "{holding:#?}");
    assert_eq!(holding[0].1.matches(trace_id).count(), 1, "{holding:#?}");
    let kept: Option<String> = redis::AsyncCommands::hget(&mut redis, &session_key, "tp")
        .await
        .expect("hget");
    assert_eq!(kept.as_deref(), Some(traceparent.as_str()));

    // Act: the user finishes; Didit's webhook ends the wait.
    app.sandbox_control(
        serde_json::json!({"action": "complete_session", "session_id": session_id}),
    )
    .await;
    let decided = app.wait_events("kyc.session.decided", 1).await;

    // Assert: the decision read after the webhook is still in the caller's trace, and the
    // finished session holds no trace context anywhere.
    let data: serde_json::Value = serde_json::from_str(&decided[0]["data"]).expect("data");
    assert_eq!(data["trace_id"], trace_id, "{data}");
    let left = eventually(
        "no trace context left once the session finished",
        Duration::from_secs(10),
        || {
            let mut redis = redis.clone();
            async move {
                let holding = keys_holding(&mut redis, trace_id).await;
                holding.is_empty().then_some(holding)
            }
        },
    )
    .await;
    assert!(left.is_empty());
    app.stop().await;
}

#[cfg(feature = "otel")]
#[tokio::test(flavor = "current_thread")]
async fn the_rust_producer_continues_the_callers_current_span() {
    use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
    use tracing::Instrument;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::layer::SubscriberExt;

    // Arrange: a caller that traces with tracing-opentelemetry (no exporter needed).
    let app = spawn_app(AppOptions {
        in_process: false,
        ..Default::default()
    })
    .await;
    let producer = app.producer().await;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("caller")));
    let _caller = tracing::subscriber::set_default(subscriber);
    let span = tracing::info_span!("caller's request");
    let caller_trace = span.context().span().span_context().trace_id().to_string();

    // Act
    producer
        .start_kyc(kyc_worker::domain::StartRequest {
            vendor_data: "rust-caller-1".into(),
            ..Default::default()
        })
        .instrument(span)
        .await
        .expect("enqueued");

    // Assert: the start job's envelope continues the caller's trace.
    let mut redis = app.redis.connection().await;
    let ready: redis::streams::StreamRangeReply =
        redis::AsyncCommands::xrange_all(&mut redis, "kyc:queue:start:ready")
            .await
            .expect("xrange");
    let envelope: serde_json::Value = ready
        .ids
        .first()
        .and_then(|e| e.map.get("j"))
        .and_then(|j| redis::from_redis_value_ref::<String>(j).ok())
        .and_then(|j| serde_json::from_str(&j).ok())
        .expect("one start job");
    let tp = envelope["tp"]
        .as_str()
        .expect("a traceparent in the envelope");
    assert_eq!(tp.len(), 55);
    assert_eq!(&tp[3..35], caller_trace, "{envelope}");
}
