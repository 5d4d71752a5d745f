//! The operator console: plain HTTP for access rules and escaping, headless Chromium (through
//! chromedriver's WebDriver API) for what an operator does on the pages.
//!
//! Chromium and chromedriver come from Debian (`scripts/install-deps.sh` installs them); a
//! machine without them fails these tests unless `KYC_SKIP_BROWSER=1`. With
//! `KYC_CONSOLE_SCREENSHOTS=<dir>` the browser tests save the README's screenshots there.

use std::{
    collections::HashMap,
    process::{Child, Command, Stdio},
    time::Duration,
};

use kyc_worker::{
    domain::StartRequest,
    jobs::{OperatorAction, OperatorDecision, PollDecision},
    queue::{Job, Queue},
};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{eventually, free_port, spawn_app, AppOptions, TestApp, DEADLINE};

const ADMIN_TOKEN: &str = "console-admin-token-0123456789";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

async fn console_app() -> TestApp {
    spawn_app(AppOptions {
        env: vec![("KYC__HTTP__ADMIN_TOKEN".into(), ADMIN_TOKEN.into())],
        ..Default::default()
    })
    .await
}

async fn queue(app: &TestApp) -> Queue {
    let settings = app.settings();
    Queue::connect(settings.redis.url(), &settings.redis.prefix, settings.queue)
        .await
        .expect("queue")
}

/// Starts a verification and waits for its `kyc.session.decided` with `status`; returns
/// the request id and the session id.
async fn decided(app: &TestApp, vendor_data: &str, scenario: &str, status: &str) -> (String, Uuid) {
    let request = app
        .producer()
        .await
        .start_kyc(StartRequest {
            vendor_data: vendor_data.into(),
            sandbox_scenario: Some(scenario.into()),
            ..Default::default()
        })
        .await
        .expect("enqueue")
        .to_string();
    let event = eventually(
        &format!("{status} for {vendor_data}"),
        Duration::from_secs(30),
        || async {
            app.events().await.into_iter().find(|e| {
                e["request_id"] == request
                    && e["type"] == "kyc.session.decided"
                    && e["status"] == status
            })
        },
    )
    .await;
    (request, event["session_id"].parse().expect("session id"))
}

fn decided_events(
    events: &[HashMap<String, String>],
    request: &str,
    status: &str,
) -> Vec<HashMap<String, String>> {
    events
        .iter()
        .filter(|e| {
            e["request_id"] == request
                && e["type"] == "kyc.session.decided"
                && e["status"] == status
        })
        .cloned()
        .collect()
}

/// The session's status at the sandbox, read as a client of its Didit API.
async fn sandbox_status(app: &TestApp, session: Uuid) -> String {
    let decision: Value = reqwest::Client::new()
        .get(format!(
            "{}v3/session/{session}/decision/",
            app.sandbox.base_url()
        ))
        .header("x-api-key", "sandbox")
        .send()
        .await
        .expect("decision")
        .json()
        .await
        .expect("decision json");
    decision["status"].as_str().unwrap_or_default().to_owned()
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

async fn get_page(app: &TestApp, path: &str, token: Option<&str>) -> (u16, String) {
    let mut request = no_redirects().get(app.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("console page");
    let status = response.status().as_u16();
    (status, response.text().await.expect("page text"))
}

async fn post_form(
    app: &TestApp,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    form: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = no_redirects().post(app.url(path)).form(form);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    request.send().await.expect("console post")
}

#[tokio::test]
async fn without_the_admin_token_the_console_is_read_only_and_masks_pii() {
    // Arrange
    let app = console_app().await;
    let (_, sid) = decided(
        &app,
        "masked-vendor-4711",
        "review_face_match_borderline",
        "In Review",
    )
    .await;

    // Act
    let (status, reviews) = get_page(&app, "/console/reviews", None).await;
    let (_, admin_reviews) = get_page(&app, "/console/reviews", Some(ADMIN_TOKEN)).await;
    let (_, found) = get_page(&app, "/console/sessions?q=masked-vendor-4711", None).await;
    let approve = post_form(
        &app,
        &format!("/console/reviews/{sid}"),
        None,
        &[("x-operator", "mallory")],
        &[("action", "approve")],
    )
    .await;
    let wrong_token = post_form(
        &app,
        &format!("/console/reviews/{sid}"),
        Some("not-the-admin-token-at-all"),
        &[("x-operator", "mallory")],
        &[("action", "approve")],
    )
    .await;
    let replay_all = post_form(&app, "/console/dead/start/replay-all", None, &[], &[]).await;
    let cross_site = post_form(
        &app,
        "/console/dead/start/replay-all",
        Some(ADMIN_TOKEN),
        &[("origin", "http://evil.example")],
        &[],
    )
    .await;
    let bad_login = post_form(
        &app,
        "/console/login",
        None,
        &[],
        &[
            ("token", "guess-guess-guess-guess"),
            ("operator", "mallory"),
        ],
    )
    .await;

    // Assert
    assert_eq!(status, 200);
    assert!(reviews.contains(&sid.to_string()), "{reviews}");
    assert!(reviews.contains("LOW_FACE_MATCH_SIMILARITY") || reviews.contains("face"));
    assert!(!reviews.contains("masked-vendor-4711"), "{reviews}");
    assert!(
        !reviews.contains("id=\"approve-"),
        "buttons shown read-only"
    );
    assert!(found.contains("ma•••"), "{found}");
    assert!(!found.contains("masked-vendor-4711"), "{found}");
    assert!(found.contains("event_published"), "{found}");
    assert!(admin_reviews.contains("masked-vendor-4711"));
    assert!(admin_reviews.contains(&format!("id=\"approve-{sid}\"")));
    assert_eq!(approve.status().as_u16(), 401);
    assert_eq!(wrong_token.status().as_u16(), 401);
    assert_eq!(replay_all.status().as_u16(), 401);
    assert_eq!(cross_site.status().as_u16(), 403);
    assert_eq!(bad_login.status().as_u16(), 401);
    assert!(bad_login
        .headers()
        .get("set-cookie")
        .is_none_or(|c| !c.to_str().unwrap_or("").contains("kyc_console=")));
    let events = app.events().await;
    assert!(
        !events
            .iter()
            .any(|e| e["decided_by"].starts_with("operator:")),
        "an unauthorised action reached the pipeline"
    );
    let metrics = app.metrics().await;
    assert!(metrics.contains("kyc_console_login_failures_total{reason=\"wrong_token\"} 1"));
    assert!(metrics.contains("kyc_console_actions_total{action=\"approve\"} 0"));
    app.stop().await;
}

#[tokio::test]
async fn with_the_admin_token_an_operator_declines_over_http_and_the_action_is_audited() {
    // Arrange
    let app = console_app().await;
    let (request, sid) = decided(
        &app,
        "decline-me-by-hand",
        "review_aml_possible_match",
        "In Review",
    )
    .await;

    // Act
    let response = post_form(
        &app,
        &format!("/console/reviews/{sid}"),
        Some(ADMIN_TOKEN),
        &[("x-operator", "bob")],
        &[("action", "decline"), ("note", "confirmed PEP")],
    )
    .await;

    // Assert
    assert_eq!(response.status().as_u16(), 303);
    let declined = app.wait_events("kyc.session.decided", 2).await;
    let declined = decided_events(&declined, &request, "Declined");
    assert_eq!(declined.len(), 1, "{declined:?}");
    assert_eq!(declined[0]["decided_by"], "operator:bob");
    assert_eq!(declined[0]["previous_status"], "In Review");
    eventually("Declined at the sandbox", DEADLINE, || async {
        (sandbox_status(&app, sid).await == "Declined").then_some(())
    })
    .await;
    let (_, timeline) = get_page(
        &app,
        &format!("/console/sessions?q={request}"),
        Some(ADMIN_TOKEN),
    )
    .await;
    assert!(timeline.contains("console_action"), "{timeline}");
    assert!(timeline.contains("didit_update_status"), "{timeline}");
    let (_, reviews) = get_page(&app, "/console/reviews", None).await;
    assert!(
        !reviews.contains(&sid.to_string()),
        "still listed: {reviews}"
    );
    let (_, overview) = get_page(&app, "/console/", None).await;
    assert!(overview.contains("decline"), "{overview}");
    app.stop().await;
}

#[tokio::test]
async fn hostile_values_are_escaped_on_every_page() {
    // Arrange
    let app = console_app().await;
    let hostile = "<script>alert('x')</script>\"&";
    let (request, _) = decided(&app, hostile, "review_face_match_borderline", "In Review").await;
    let q = queue(&app).await;
    q.push(&OperatorAction {
        session_id: Uuid::new_v4(),
        action: OperatorDecision::Approve,
        operator: "<img src=x onerror=alert(1)>".into(),
        note: Some("</code><script>alert(2)</script>".into()),
    })
    .await
    .expect("push");
    eventually("the hostile job is dead", DEADLINE, || async {
        let stats = q.stats(OperatorAction::QUEUE).await.ok()?;
        (stats.dead == 1).then_some(())
    })
    .await;

    // Act
    let mut pages = Vec::new();
    for path in [
        "/console/".to_owned(),
        "/console/reviews".to_owned(),
        "/console/dead".to_owned(),
        format!("/console/sessions?q={request}"),
        "/console/sessions?q=%3Cscript%3Ealert('x')%3C%2Fscript%3E%22%26".to_owned(),
        "/console/reviews?notice=%3Cscript%3Ealert(3)%3C%2Fscript%3E".to_owned(),
        "/console/sessions".to_owned(),
        "/console/dead?queue=operator".to_owned(),
    ] {
        pages.push((path.clone(), get_page(&app, &path, Some(ADMIN_TOKEN)).await));
    }

    // Assert
    for (path, (status, body)) in &pages {
        assert_eq!(*status, 200, "{path}");
        assert!(!body.contains("<script>alert"), "{path}: {body}");
        assert!(!body.contains("<img src=x"), "{path}: {body}");
    }
    let reviews = &pages[1].1 .1;
    // Text and double-quoted attribute values: `<`, `>`, `&` and `"` are what can end them.
    let escaped = "&lt;script&gt;alert('x')&lt;/script&gt;&quot;&amp;";
    assert!(reviews.contains(escaped), "{reviews}");
    let list = &pages[6].1 .1;
    assert!(list.contains(escaped), "the sessions list: {list}");
    let dead = &pages[2].1 .1;
    assert!(
        dead.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{dead}"
    );
    app.stop().await;
}

/// A headless Chromium driven through chromedriver's WebDriver API.
struct Browser {
    http: reqwest::Client,
    driver: Child,
    base: String,
    session: String,
}

/// The key WebDriver returns element references under.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    /// Starts chromedriver and a browser session; `None` when `KYC_SKIP_BROWSER=1` and the
    /// browser is missing.
    async fn start() -> Option<Browser> {
        let present =
            std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists();
        if !present {
            if std::env::var("KYC_SKIP_BROWSER").as_deref() == Ok("1") {
                eprintln!("skipped: {CHROMIUM} or {CHROMEDRIVER} missing and KYC_SKIP_BROWSER=1");
                return None;
            }
            panic!(
                "the console's browser tests need {CHROMIUM} and {CHROMEDRIVER}: \
                 `apt-get install chromium chromium-driver` (or `make deps`), \
                 or set KYC_SKIP_BROWSER=1 to skip them"
            );
        }
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let status = format!("{base}/status");
        eventually("chromedriver to answer /status", DEADLINE, || {
            let (http, status) = (http.clone(), status.clone());
            async move {
                let v: Value = http.get(status).send().await.ok()?.json().await.ok()?;
                v["value"]["ready"].as_bool().filter(|r| *r)
            }
        })
        .await;
        let mut browser = Browser {
            http,
            driver,
            base,
            session: String::new(),
        };
        let created = browser
            .call(
                reqwest::Method::POST,
                "/session",
                Some(json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": CHROMIUM,
                        "args": [
                            "--headless", "--no-sandbox", "--disable-gpu",
                            "--disable-background-networking", "--disable-component-update",
                            "--disable-dev-shm-usage", "--window-size=1400,900",
                        ],
                    },
                }}})),
            )
            .await;
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {created}"))
            .to_owned();
        Some(browser)
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(Duration::from_secs(60));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let reply: Value = request
            .send()
            .await
            .expect("webdriver call")
            .json()
            .await
            .expect("webdriver json");
        reply["value"].clone()
    }

    fn path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    async fn goto(&self, url: &str) {
        self.call(
            reqwest::Method::POST,
            &self.path("/url"),
            Some(json!({"url": url})),
        )
        .await;
    }

    /// The element a CSS selector names, waiting for it to appear; on timeout the panic
    /// shows the page the browser is on.
    async fn find(&self, css: &str) -> String {
        let until = tokio::time::Instant::now() + DEADLINE;
        loop {
            let found = self
                .call(
                    reqwest::Method::POST,
                    &self.path("/element"),
                    Some(json!({"using": "css selector", "value": css})),
                )
                .await;
            if let Some(id) = found[ELEMENT].as_str() {
                return id.to_owned();
            }
            if tokio::time::Instant::now() > until {
                let url = self
                    .call(reqwest::Method::GET, &self.path("/url"), None)
                    .await;
                let source = self
                    .call(reqwest::Method::GET, &self.path("/source"), None)
                    .await;
                panic!("no element {css} on {url} after {DEADLINE:?}:\n{source}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &self.path(&format!("/element/{id}/click")),
            Some(json!({})),
        )
        .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &self.path(&format!("/element/{id}/value")),
            Some(json!({"text": text})),
        )
        .await;
    }

    async fn text(&self, css: &str) -> String {
        let id = self.find(css).await;
        self.call(
            reqwest::Method::GET,
            &self.path(&format!("/element/{id}/text")),
            None,
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Runs a script in the page and returns its value.
    async fn execute(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            &self.path("/execute/sync"),
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Sends a Chrome DevTools command (chromedriver's `goog/cdp/execute`).
    async fn cdp(&self, cmd: &str, params: Value) {
        self.call(
            reqwest::Method::POST,
            &self.path("/goog/cdp/execute"),
            Some(json!({"cmd": cmd, "params": params})),
        )
        .await;
    }

    /// The `data-request` of every row of the sessions list, top to bottom.
    async fn listed_requests(&self) -> Vec<String> {
        let value = self
            .execute(
                "return Array.from(document.querySelectorAll('tr.session-row')).map(r => r.dataset.request);",
            )
            .await;
        serde_json::from_value(value).unwrap_or_default()
    }

    /// How many elements a CSS selector matches now (without waiting).
    async fn count(&self, css: &str) -> usize {
        let value = self
            .execute(&format!(
                "return document.querySelectorAll({}).length;",
                json!(css)
            ))
            .await;
        value.as_u64().unwrap_or(0) as usize
    }

    /// Accepts the `confirm()` dialog the last click opened, waiting for it.
    async fn accept_dialog(&self) {
        eventually("a dialog to accept", DEADLINE, || async {
            let reply: Value = self
                .http
                .post(format!("{}{}", self.base, self.path("/alert/accept")))
                .json(&json!({}))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            reply["value"].is_null().then_some(())
        })
        .await;
    }

    /// Saves a PNG of the page as `console-<name>.png` when `KYC_CONSOLE_SCREENSHOTS` names
    /// a directory.
    async fn screenshot(&self, name: &str) {
        let Ok(dir) = std::env::var("KYC_CONSOLE_SCREENSHOTS") else {
            return;
        };
        use base64::Engine;
        let shot = self
            .call(reqwest::Method::GET, &self.path("/screenshot"), None)
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot.as_str().expect("screenshot data"))
            .expect("base64 png");
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        std::fs::write(format!("{dir}/console-{name}.png"), png).expect("write screenshot");
    }

    /// Logs in on the console's form as `operator`.
    async fn log_in(&self, app: &TestApp, operator: &str) {
        self.goto(&app.url("/console/login")).await;
        self.type_into("#operator", operator).await;
        self.type_into("#token", ADMIN_TOKEN).await;
        self.click("#login").await;
        self.find(".badge.admin").await;
    }

    async fn quit(mut self) {
        self.call(reqwest::Method::DELETE, &self.path(""), None)
            .await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
    }
}

#[tokio::test]
async fn the_overview_shows_real_queue_counts() {
    // Arrange
    let app = console_app().await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    let q = queue(&app).await;
    q.push(&OperatorAction {
        session_id: Uuid::new_v4(),
        action: OperatorDecision::Approve,
        operator: "nobody".into(),
        note: None,
    })
    .await
    .expect("push");
    for _ in 0..2 {
        let sid = Uuid::new_v4();
        q.push_at(
            &PollDecision::slot(sid),
            &PollDecision {
                session_id: sid,
                polls: 0,
                urgent: false,
            },
            std::time::SystemTime::now() + Duration::from_secs(3600),
        )
        .await
        .expect("schedule");
    }
    eventually("the job for no session is dead", DEADLINE, || async {
        let stats = q.stats(OperatorAction::QUEUE).await.ok()?;
        (stats.dead == 1).then_some(())
    })
    .await;
    decided(&app, "overview-user", "approve", "Approved").await;

    // Act
    browser.goto(&app.url("/console/")).await;

    // Assert
    assert_eq!(browser.text("#q-operator-dead").await, "1");
    assert_eq!(browser.text("#q-poll-scheduled").await, "2");
    assert_eq!(browser.text("#q-start-dead").await, "0");
    assert_eq!(browser.text("#q-start-done").await, "1");
    assert_eq!(browser.text("#processes").await, "1");
    assert_eq!(browser.text("#paused").await, "running");
    let create: u64 = browser
        .text("#budget-create")
        .await
        .parse()
        .expect("a count");
    assert!(create >= 1, "one session was created in this window");
    browser.screenshot("overview").await;
    browser.quit().await;
    app.stop().await;
}

#[tokio::test]
async fn a_session_found_by_vendor_data_shows_its_timeline() {
    // Arrange
    let app = console_app().await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    let (request, sid) = decided(&app, "timeline-user-7", "approve", "Approved").await;

    // Act
    browser.goto(&app.url("/console/sessions")).await;
    browser.type_into("#q", "timeline-user-7").await;
    browser.click("#search").await;

    // Assert
    browser.find("ol.timeline li").await;
    let heading = browser.text("section.request h2").await;
    assert!(heading.contains(&request), "{heading}");
    assert_eq!(browser.text(".session-id").await, sid.to_string());
    assert_eq!(browser.text(".last-status").await, "Approved");
    let timeline = browser.text("ol.timeline").await;
    for step in ["enqueued", "session_created", "event_published"] {
        assert!(timeline.contains(step), "{step} missing from {timeline}");
    }
    assert_eq!(browser.text(".vendor-data").await, "ti••••••••");
    browser.screenshot("sessions").await;
    browser.quit().await;
    app.stop().await;
}

#[tokio::test]
async fn an_in_review_session_approved_from_the_page_becomes_approved() {
    // Arrange
    let app = console_app().await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    let (request, sid) = decided(
        &app,
        "review-by-hand-1",
        "review_face_match_borderline",
        "In Review",
    )
    .await;
    browser.log_in(&app, "alice").await;

    // Act
    browser.goto(&app.url("/console/reviews")).await;
    browser.find(&format!("#review-{sid}")).await;
    browser.screenshot("reviews").await;
    browser.click(&format!("#approve-{sid}")).await;

    // Assert
    let notice = browser.text("#notice").await;
    assert!(notice.contains("approve"), "{notice}");
    let approved = eventually("the operator's Approved event", DEADLINE, || async {
        let found = decided_events(&app.events().await, &request, "Approved");
        (!found.is_empty()).then_some(found)
    })
    .await;
    assert_eq!(approved[0]["decided_by"], "operator:alice");
    assert_eq!(approved[0]["previous_status"], "In Review");
    eventually("Approved at the sandbox", DEADLINE, || async {
        (sandbox_status(&app, sid).await == "Approved").then_some(())
    })
    .await;
    // The sandbox's webhook for our own update is the echo: once its read is finished it
    // must not have published again.
    let settings = app.settings();
    let store = kyc_worker::store::Store::new(
        kyc_worker::queue::connect(settings.redis.url())
            .await
            .expect("redis"),
        &settings.redis.prefix,
        settings.events.clone(),
    );
    let id = kyc_worker::domain::RequestId::parse(&request).expect("request id");
    eventually("the echo is read and finished", DEADLINE, || async {
        let trail = store.audit_trail(&id).await.ok()?;
        // The echo is read, or recognised as the recorded change and not read at all.
        let echo_read = trail.iter().any(|s| {
            (s["step"] == "decision_read" || s["step"] == "webhook_received")
                && s["status"] == "Approved"
        });
        let stats = queue(&app).await.stats(PollDecision::QUEUE).await.ok()?;
        (echo_read && stats.ready == 0 && stats.in_flight == 0).then_some(())
    })
    .await;
    assert_eq!(
        decided_events(&app.events().await, &request, "Approved").len(),
        1
    );
    browser.quit().await;
    app.stop().await;
}

#[tokio::test]
async fn a_dead_job_replayed_from_the_page_completes() {
    // Arrange: Didit refuses the operator's update once, so the job is dead-lettered.
    let app = console_app().await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    let (request, sid) = decided(
        &app,
        "replay-user-3",
        "review_high_scores_warning",
        "In Review",
    )
    .await;
    app.sandbox_control(
        json!({"action": "fail_next", "endpoint": "update_status", "count": 1, "status": 400}),
    )
    .await;
    let response = post_form(
        &app,
        &format!("/console/reviews/{sid}"),
        Some(ADMIN_TOKEN),
        &[("x-operator", "carol")],
        &[("action", "approve")],
    )
    .await;
    assert_eq!(response.status().as_u16(), 303);
    let q = queue(&app).await;
    eventually("the refused action is dead", DEADLINE, || async {
        let stats = q.stats(OperatorAction::QUEUE).await.ok()?;
        (stats.dead == 1).then_some(())
    })
    .await;
    browser.log_in(&app, "carol").await;

    // Act
    browser.goto(&app.url("/console/dead")).await;
    let reason = browser.text("#dead-operator .reason").await;
    browser.screenshot("dead").await;
    browser.click("#dead-operator button.replay").await;

    // Assert
    assert!(reason.contains("400"), "{reason}");
    let notice = browser.text("#notice").await;
    assert!(notice.contains("replayed 1 operator job"), "{notice}");
    let approved = eventually("the replayed action's Approved event", DEADLINE, || async {
        let found = decided_events(&app.events().await, &request, "Approved");
        (!found.is_empty()).then_some(found)
    })
    .await;
    assert_eq!(approved[0]["decided_by"], "operator:carol");
    assert_eq!(approved[0]["previous_status"], "In Review");
    let stats = q.stats(OperatorAction::QUEUE).await.expect("stats");
    assert_eq!(stats.dead, 0);
    assert_eq!(sandbox_status(&app, sid).await, "Approved");
    let (_, overview) = get_page(&app, "/console/", None).await;
    assert!(
        overview.contains("operator/"),
        "the replay is not in the log: {overview}"
    );
    browser.quit().await;
    app.stop().await;
}

#[tokio::test]
async fn a_session_a_rule_held_for_review_is_listed_and_an_operator_releases_it() {
    // Arrange: a rule that holds every adult's approval for a person.
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "version = \"console-test\"\n\n[[rules]]\nname = \"hold_adults\"\nwhen = \"age >= 18\"\naction = \"review\"\ncomment = \"a person looks at every adult\"\n",
    )
    .expect("write rules");
    let app = spawn_app(AppOptions {
        rules: true,
        env: vec![
            ("KYC__HTTP__ADMIN_TOKEN".into(), ADMIN_TOKEN.into()),
            ("KYC__RULES__FILE".into(), rules.display().to_string()),
        ],
        ..Default::default()
    })
    .await;
    let (request, sid) = decided(&app, "held-by-rule", "approve", "In Review").await;

    // Act
    let (_, listed) = get_page(&app, "/console/reviews", None).await;
    let response = post_form(
        &app,
        &format!("/console/reviews/{sid}"),
        Some(ADMIN_TOKEN),
        &[("x-operator", "dora")],
        &[("action", "approve")],
    )
    .await;

    // Assert
    assert!(listed.contains(&format!("id=\"review-{sid}\"")), "{listed}");
    assert!(listed.contains("rule:hold_adults"), "{listed}");
    assert_eq!(response.status().as_u16(), 303);
    let approved = eventually("the operator's Approved event", DEADLINE, || async {
        let found = decided_events(&app.events().await, &request, "Approved");
        (!found.is_empty()).then_some(found)
    })
    .await;
    assert_eq!(approved.len(), 1);
    assert_eq!(approved[0]["decided_by"], "operator:dora");
    assert_eq!(approved[0]["previous_status"], "In Review");
    assert_eq!(sandbox_status(&app, sid).await, "Approved");
    let (_, after) = get_page(&app, "/console/reviews", None).await;
    assert!(!after.contains(&sid.to_string()), "{after}");
    let again = post_form(
        &app,
        &format!("/console/reviews/{sid}"),
        Some(ADMIN_TOKEN),
        &[("x-operator", "dora")],
        &[("action", "decline")],
    )
    .await;
    assert_eq!(
        again.status().as_u16(),
        409,
        "a decided session is not held any more"
    );
    // A stale action (queued before the decision, or replayed later) changes nothing.
    let q = queue(&app).await;
    q.push(&OperatorAction {
        session_id: sid,
        action: OperatorDecision::Decline,
        operator: "late".into(),
        note: None,
    })
    .await
    .expect("push");
    let dead = eventually("the stale action is dead", DEADLINE, || async {
        let dead = q.dead_list(OperatorAction::QUEUE, 10).await.ok()?;
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    assert!(
        dead[0]
            .reason
            .contains("no longer In Review (now Approved)"),
        "{}",
        dead[0].reason
    );
    assert_eq!(sandbox_status(&app, sid).await, "Approved");
    app.stop().await;
}

#[tokio::test]
async fn a_read_only_viewer_sees_no_personal_data_and_the_login_cookie_holds_no_token() {
    // Arrange: a review whose request carries personal details, and a dead start job with
    // the same details in its payload (refused for its language).
    let app = console_app().await;
    let details = kyc_worker::domain::ExpectedDetails {
        first_name: Some("Zebulon".into()),
        last_name: Some("Quixotewright".into()),
        identification_number: Some("ZX4455667".into()),
        ..Default::default()
    };
    let request = app
        .producer()
        .await
        .start_kyc(StartRequest {
            vendor_data: "pii-person-1".into(),
            sandbox_scenario: Some("review_aml_possible_match".into()),
            expected_details: Some(details.clone()),
            metadata: Some(json!({"customer_email": "zebulon.q@privacy.example"})),
            ..Default::default()
        })
        .await
        .expect("enqueue")
        .to_string();
    app.wait_events("kyc.session.decided", 1).await;
    let q = queue(&app).await;
    q.push(&kyc_worker::jobs::StartKyc {
        request: StartRequest {
            request_id: Some("dead-start-1".into()),
            vendor_data: "pii-person-2".into(),
            language: Some("not a language".into()),
            expected_details: Some(details),
            ..Default::default()
        },
    })
    .await
    .expect("push");
    eventually("the invalid start job is dead", DEADLINE, || async {
        let stats = q.stats("start").await.ok()?;
        (stats.dead == 1).then_some(())
    })
    .await;

    // Act
    let mut pages = String::new();
    for path in [
        "/console/".to_owned(),
        "/console/reviews".to_owned(),
        "/console/dead".to_owned(),
        format!("/console/sessions?q={request}"),
        "/console/sessions?q=pii-person-1".to_owned(),
        "/console/sessions?q=dead-start-1".to_owned(),
    ] {
        let (status, body) = get_page(&app, &path, None).await;
        assert_eq!(status, 200, "{path}");
        pages.push_str(&body);
    }
    let login = post_form(
        &app,
        "/console/login",
        None,
        &[],
        &[("token", ADMIN_TOKEN), ("operator", "erin")],
    )
    .await;

    // Assert
    for needle in [
        "pii-person",
        "Zebulon",
        "Quixotewright",
        "ZX4455667",
        "zebulon.q@privacy.example",
        ADMIN_TOKEN,
    ] {
        assert!(!pages.contains(needle), "{needle} shown read-only");
    }
    assert!(pages.contains("pi•••"), "the masked vendor_data is shown");
    let (_, admin_dead) = get_page(&app, "/console/dead", Some(ADMIN_TOKEN)).await;
    assert!(admin_dead.contains("Zebulon"), "the admin sees the payload");
    assert_eq!(login.status().as_u16(), 303);
    let cookies: Vec<String> = login
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|c| c.to_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        cookies.iter().any(|c| c.starts_with("kyc_console=")
            && c.contains("HttpOnly")
            && c.contains("SameSite=Strict")),
        "{cookies:?}"
    );
    assert!(
        cookies.iter().all(|c| !c.contains(ADMIN_TOKEN)),
        "{cookies:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_console_is_served_on_the_internal_port_and_can_be_switched_off() {
    // Arrange
    let internal = free_port();
    let split = spawn_app(AppOptions {
        env: vec![("KYC__HTTP__INTERNAL_PORT".into(), internal.to_string())],
        ..Default::default()
    })
    .await;
    let off = spawn_app(AppOptions {
        env: vec![("KYC__HTTP__CONSOLE".into(), "false".into())],
        ..Default::default()
    })
    .await;

    // Act
    let on_internal = eventually("the internal port serves the console", DEADLINE, || async {
        reqwest::get(format!("http://127.0.0.1:{internal}/console/"))
            .await
            .ok()
    })
    .await;
    let (on_public, _) = get_page(&split, "/console/", None).await;
    let (switched_off, _) = get_page(&off, "/console/", None).await;
    let (metrics_when_off, _) = get_page(&off, "/metrics", None).await;

    // Assert
    assert_eq!(on_internal.status().as_u16(), 200);
    let page = on_internal.text().await.expect("page");
    assert!(page.contains("id=\"q-operator-dead\""), "{page}");
    assert_eq!(on_public, 404);
    assert_eq!(switched_off, 404);
    assert_eq!(metrics_when_off, 200);
    split.stop().await;
    off.stop().await;
}

#[tokio::test]
async fn replay_all_and_purge_work_the_dead_set_and_are_logged() {
    // Arrange: two actions for sessions nobody knows die at once.
    let app = console_app().await;
    let q = queue(&app).await;
    for _ in 0..2 {
        q.push(&OperatorAction {
            session_id: Uuid::new_v4(),
            action: OperatorDecision::Resubmit,
            operator: "frank".into(),
            note: None,
        })
        .await
        .expect("push");
    }
    let dead = |n: u64| {
        let q = q.clone();
        async move {
            eventually(&format!("{n} dead operator jobs"), DEADLINE, || async {
                let stats = q.stats(OperatorAction::QUEUE).await.ok()?;
                (stats.dead == n).then_some(())
            })
            .await
        }
    };
    dead(2).await;

    // Act
    let replayed = post_form(
        &app,
        "/console/dead/operator/replay-all",
        Some(ADMIN_TOKEN),
        &[("x-operator", "frank")],
        &[],
    )
    .await;
    let location = replayed
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    // They die again (the sessions still do not exist), and are purged.
    dead(2).await;
    let purged = post_form(
        &app,
        "/console/dead/operator/purge",
        Some(ADMIN_TOKEN),
        &[("x-operator", "frank")],
        &[("older_than_s", "0")],
    )
    .await;
    let unknown = post_form(
        &app,
        "/console/dead/nope/purge",
        Some(ADMIN_TOKEN),
        &[("x-operator", "frank")],
        &[],
    )
    .await;

    // Assert
    assert_eq!(replayed.status().as_u16(), 303);
    assert!(location.contains("replayed+2+operator+jobs"), "{location}");
    assert_eq!(purged.status().as_u16(), 303);
    assert_eq!(unknown.status().as_u16(), 404);
    assert_eq!(q.stats(OperatorAction::QUEUE).await.expect("stats").dead, 0);
    let (_, overview) = get_page(&app, "/console/", None).await;
    assert!(overview.contains("replay_all"), "{overview}");
    assert!(overview.contains("operator (2 jobs)"), "{overview}");
    let metrics = app.metrics().await;
    assert!(metrics.contains("kyc_console_actions_total{action=\"replay_all\"} 1"));
    assert!(metrics.contains("kyc_console_actions_total{action=\"purge\"} 1"));
    app.stop().await;
}

#[tokio::test]
async fn an_admin_action_without_a_valid_operator_name_is_refused_and_changes_nothing() {
    // Arrange: one dead operator job, and a session held for review.
    let app = console_app().await;
    let (_, sid) = decided(
        &app,
        "nameless-review",
        "review_face_match_borderline",
        "In Review",
    )
    .await;
    let q = queue(&app).await;
    q.push(&OperatorAction {
        session_id: Uuid::new_v4(),
        action: OperatorDecision::Approve,
        operator: "gina".into(),
        note: None,
    })
    .await
    .expect("push");
    eventually("the job for no session is dead", DEADLINE, || async {
        let stats = q.stats(OperatorAction::QUEUE).await.ok()?;
        (stats.dead == 1).then_some(())
    })
    .await;
    let review = format!("/console/reviews/{sid}");

    // Act
    let mut refused = Vec::new();
    for (path, headers, form) in [
        ("/console/dead/operator/purge", vec![], vec![]),
        ("/console/dead/operator/replay-all", vec![], vec![]),
        (
            "/console/dead/operator/purge",
            vec![("x-operator", "alice smith")],
            vec![],
        ),
        (
            "/console/dead/operator/purge",
            vec![("x-operator", "")],
            vec![],
        ),
        (review.as_str(), vec![], vec![("action", "approve")]),
        (
            review.as_str(),
            vec![],
            vec![("action", "approve"), ("operator", "<b>x</b>")],
        ),
    ] {
        let response = post_form(&app, path, Some(ADMIN_TOKEN), &headers, &form).await;
        let status = response.status().as_u16();
        let body = response.text().await.expect("body");
        refused.push((path.to_owned(), headers.clone(), status, body));
    }

    // Assert
    for (path, headers, status, body) in &refused {
        assert_eq!(*status, 400, "{path} {headers:?}: {body}");
        assert!(body.contains("X-Operator"), "{body}");
    }
    assert_eq!(q.stats(OperatorAction::QUEUE).await.expect("stats").dead, 1);
    let (_, reviews) = get_page(&app, "/console/reviews", None).await;
    assert!(reviews.contains(&format!("review-{sid}")), "{reviews}");
    let (_, overview) = get_page(&app, "/console/", Some(ADMIN_TOKEN)).await;
    assert!(!overview.contains("id=\"actions\""), "logged: {overview}");
    let metrics = app.metrics().await;
    for action in ["purge", "replay_all", "approve"] {
        assert!(
            metrics.contains(&format!(
                "kyc_console_actions_total{{action=\"{action}\"}} 0"
            )),
            "{action} counted"
        );
    }
    let purged = post_form(
        &app,
        "/console/dead/operator/purge",
        Some(ADMIN_TOKEN),
        &[("x-operator", "gina")],
        &[],
    )
    .await;
    assert_eq!(purged.status().as_u16(), 303);
    assert_eq!(q.stats(OperatorAction::QUEUE).await.expect("stats").dead, 0);
    app.stop().await;
}

/// Queues `n` operator actions for sessions nobody knows and waits until all are dead.
async fn dead_operator_jobs(app: &TestApp, n: u64) {
    let q = queue(app).await;
    for _ in 0..n {
        q.push(&OperatorAction {
            session_id: Uuid::new_v4(),
            action: OperatorDecision::Approve,
            operator: "nobody".into(),
            note: None,
        })
        .await
        .expect("push");
    }
    eventually(&format!("{n} dead operator jobs"), DEADLINE, || async {
        let stats = q.stats(OperatorAction::QUEUE).await.ok()?;
        (stats.dead >= n).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_sessions_page_lists_recent_verifications_newest_first_filters_and_pages() {
    // Arrange: three verifications, one after the other.
    let app = console_app().await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    let (first, _) = decided(&app, "list-user-1", "approve", "Approved").await;
    let (declined, _) = decided(&app, "list-user-2", "decline_document_expired", "Declined").await;
    let (last, _) = decided(&app, "list-user-3", "approve", "Approved").await;

    // Act: the page without a search, two rows a page.
    browser.goto(&app.url("/console/sessions?limit=2")).await;
    browser.find("tr.session-row").await;
    let page_one = browser.listed_requests().await;
    let masked = browser.text("tr.session-row .vendor-data").await;
    browser.screenshot("sessions-list").await;
    browser.click("#next-page").await;
    browser.find("#first-page").await;
    let page_two = browser.listed_requests().await;
    // Filtered by status, then by a decider nobody was.
    browser.goto(&app.url("/console/sessions")).await;
    browser
        .click("#status-filter option[value='Declined']")
        .await;
    browser.click("#apply-filters").await;
    browser
        .find("#status-filter option[value='Declined'][selected]")
        .await;
    let declined_only = browser.listed_requests().await;
    browser
        .click("#decider-filter option[value='operator']")
        .await;
    browser.click("#apply-filters").await;
    let none = browser.text("#none").await;

    // Assert
    assert_eq!(page_one, vec![last.clone(), declined.clone()]);
    assert_eq!(page_two, vec![first]);
    assert_eq!(masked, "li••••••••", "read-only: vendor_data masked");
    assert_eq!(declined_only, vec![declined]);
    assert!(none.contains("No verification matches"), "{none}");
    browser.quit().await;
    app.stop().await;
}

#[tokio::test]
async fn the_review_queue_and_the_dead_set_page_and_one_dead_job_is_deleted() {
    // Arrange: three sessions held for review, three dead operator jobs.
    let app = console_app().await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    let mut held = Vec::new();
    for n in 0..3 {
        let (_, sid) = decided(
            &app,
            &format!("paged-review-{n}"),
            "review_face_match_borderline",
            "In Review",
        )
        .await;
        held.push(sid);
    }
    dead_operator_jobs(&app, 3).await;
    browser.log_in(&app, "hana").await;

    // Act: the review queue two at a time; the operator queue's dead set two at a time.
    browser.goto(&app.url("/console/reviews?limit=2")).await;
    browser.find("#reviews").await;
    let reviews_one = browser.count("#reviews tbody tr").await;
    browser.click("#next-page").await;
    browser.find("#first-page").await;
    let reviews_two = browser.count("#reviews tbody tr").await;
    let last_held = browser.count(&format!("#review-{}", held[2])).await;
    browser
        .goto(&app.url("/console/dead?queue=operator&limit=2"))
        .await;
    browser.find("#dead-operator tr.dead-job").await;
    let dead_one = browser.count("#dead-operator tr.dead-job").await;
    browser.click("#next-page").await;
    browser.find("#first-page").await;
    let dead_two = browser.count("#dead-operator tr.dead-job").await;
    let doomed = browser
        .execute("return document.querySelector('#dead-operator input[name=entry_id]').value;")
        .await;
    browser.click("#dead-operator button.delete").await;
    browser.accept_dialog().await;
    let notice = browser.text("#notice").await;

    // Assert
    assert_eq!((reviews_one, reviews_two, last_held), (2, 1, 1));
    assert_eq!((dead_one, dead_two), (2, 1));
    assert!(notice.contains("deleted 1 dead operator job"), "{notice}");
    let q = queue(&app).await;
    assert_eq!(q.stats(OperatorAction::QUEUE).await.expect("stats").dead, 2);
    let left = q.dead_list(OperatorAction::QUEUE, 10).await.expect("dead");
    let doomed = doomed.as_str().expect("an entry id");
    assert!(left.iter().all(|j| j.entry_id != doomed), "{left:?}");
    let (_, overview) = get_page(&app, "/console/", None).await;
    assert!(
        overview.contains(&format!("operator/{doomed}")),
        "not logged"
    );
    browser.quit().await;
    app.stop().await;
}

#[tokio::test]
async fn an_action_shows_pending_until_its_job_ran_and_the_rules_that_held_it_are_shown() {
    // Arrange: a rule holds every adult for review; Didit's update fails once with a 500
    // (the job waits and retries), then with a 400 (the next job dies).
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "version = \"pending-test\"\n\n[[rules]]\nname = \"hold_adults\"\nwhen = \"age >= 18\"\naction = \"review\"\n",
    )
    .expect("write rules");
    let app = spawn_app(AppOptions {
        rules: true,
        env: vec![
            ("KYC__HTTP__ADMIN_TOKEN".into(), ADMIN_TOKEN.into()),
            ("KYC__RULES__FILE".into(), rules.display().to_string()),
        ],
        ..Default::default()
    })
    .await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    let (request, sid) = decided(&app, "pending-1", "approve", "In Review").await;
    let (_, refused) = decided(&app, "pending-2", "approve", "In Review").await;
    browser.log_in(&app, "ivan").await;
    app.sandbox_control(
        json!({"action": "fail_next", "endpoint": "update_status", "count": 1, "status": 500}),
    )
    .await;

    // Act
    browser.goto(&app.url("/console/reviews")).await;
    let matched = browser.text(&format!("#rules-{sid}")).await;
    browser.click(&format!("#approve-{sid}")).await;
    let pending = browser.text(&format!("#pending-{sid}")).await;
    browser.screenshot("reviews-pending").await;
    let approved = eventually("the operator's Approved event", DEADLINE, || async {
        let found = decided_events(&app.events().await, &request, "Approved");
        (!found.is_empty()).then_some(found)
    })
    .await;
    eventually(
        "the page re-read itself without the row",
        DEADLINE,
        || async {
            (browser.count(&format!("#review-{sid}")).await == 0
                && browser.count(&format!("#review-{refused}")).await == 1)
                .then_some(())
        },
    )
    .await;
    app.sandbox_control(
        json!({"action": "fail_next", "endpoint": "update_status", "count": 1, "status": 400}),
    )
    .await;
    browser.click(&format!("#decline-{refused}")).await;
    let not_done = browser.text(&format!("#not-done-{refused}")).await;

    // Assert
    assert!(matched.contains("hold_adults"), "{matched}");
    assert!(matched.contains("review"), "{matched}");
    assert!(pending.contains("approve by ivan"), "{pending}");
    assert_eq!(approved[0]["decided_by"], "operator:ivan");
    assert!(
        not_done.contains("decline by ivan did not go through"),
        "{not_done}"
    );
    assert_eq!(
        browser.count(&format!("#decline-{refused}")).await,
        1,
        "the buttons are back once the job ran"
    );
    browser.quit().await;
    app.stop().await;
}

#[tokio::test]
async fn the_auto_refresh_switch_rereads_a_list_and_is_remembered_per_page() {
    // Arrange
    let app = console_app().await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    browser.goto(&app.url("/console/")).await;
    let before = browser.text("#q-operator-dead").await;

    // Act: switch it on, then a job dies while the page is open.
    browser.click("#auto-refresh").await;
    dead_operator_jobs(&app, 1).await;
    let after = eventually("the overview re-read itself", DEADLINE, || async {
        let text = browser.text("#q-operator-dead").await;
        (text == "1").then_some(text)
    })
    .await;
    browser.goto(&app.url("/console/dead")).await;
    let elsewhere = browser
        .execute("return document.getElementById('auto-refresh').checked;")
        .await;
    browser.goto(&app.url("/console/")).await;
    browser.find("#q-operator-dead").await;
    let remembered = browser
        .execute("return document.getElementById('auto-refresh').checked;")
        .await;

    // Assert
    assert_eq!(before, "0");
    assert_eq!(after, "1");
    assert_eq!(elsewhere, json!(false), "the switch is per page");
    assert_eq!(remembered, json!(true));
    for page in ["/console/sessions", "/console/reviews", "/console/dead"] {
        let (_, body) = get_page(&app, page, None).await;
        assert!(body.contains("id=\"auto-refresh\""), "{page} has no switch");
    }
    browser.quit().await;
    app.stop().await;
}

#[tokio::test]
async fn the_console_follows_the_systems_dark_mode() {
    // Arrange
    let app = console_app().await;
    let Some(browser) = Browser::start().await else {
        return;
    };
    let background = "return getComputedStyle(document.body).backgroundColor;";

    // Act
    browser
        .cdp(
            "Emulation.setEmulatedMedia",
            json!({"features": [{"name": "prefers-color-scheme", "value": "dark"}]}),
        )
        .await;
    browser.goto(&app.url("/console/")).await;
    browser.find("#queues").await;
    let dark = browser.execute(background).await;
    browser.screenshot("overview-dark").await;
    browser
        .cdp(
            "Emulation.setEmulatedMedia",
            json!({"features": [{"name": "prefers-color-scheme", "value": "light"}]}),
        )
        .await;
    browser.goto(&app.url("/console/")).await;
    browser.find("#queues").await;
    let light = browser.execute(background).await;

    // Assert
    assert_eq!(dark, json!("rgb(12, 17, 29)"));
    assert_eq!(light, json!("rgb(246, 247, 249)"));
    browser.quit().await;
    app.stop().await;
}
