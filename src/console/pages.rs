//! The console's pages: each reads what it shows and renders it; none of them writes.
//!
//! Lists are paginated: the sessions list and the dead set by a stream entry id (`before`,
//! stable while entries are added), the review queue by position (`page`).

use std::collections::HashSet;

use axum::{
    extract::{Query, State},
    http::HeaderMap,
    response::{IntoResponse, Redirect, Response},
};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::{
    html::{self, pii},
    html_headers, Access, ConsoleError,
};
use crate::{
    domain::{EventType, RequestId, SessionStatus},
    jobs::{OperatorAction, QUEUES},
    queue::{now_ms, Job},
    state::AppState,
    store::{ReviewItem, StreamEvent},
};

/// Rows of a list page unless `?limit=` asks for another number (1 to [`MAX_LIMIT`]).
const DEFAULT_LIMIT: usize = 25;
const MAX_LIMIT: usize = 100;
/// Outcome events one sessions page reads at most, so a filter that matches little
/// cannot make a page read the whole stream; the next page goes on from there.
const MAX_SCAN: usize = 2000;
/// Outcome events read per round trip while filling a sessions page.
const SCAN_BATCH: usize = 200;

/// `?notice=` after an action redirected here.
#[derive(Debug, Default, Deserialize)]
pub struct Notice {
    notice: Option<String>,
}

fn render(title: &str, access: &Access, body: Markup) -> Response {
    (
        html_headers(),
        html::page(title, Some(access), body).into_string(),
    )
        .into_response()
}

fn limit(asked: Option<usize>) -> Result<usize, ConsoleError> {
    match asked {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(ConsoleError::BadRequest(format!(
            "limit: 1 to {MAX_LIMIT} rows"
        ))),
    }
}

/// A stream entry id from a `before` cursor (`<ms>-<seq>`), or a 400 naming the field.
fn cursor(before: Option<&str>) -> Result<Option<&str>, ConsoleError> {
    match before.map(str::trim).filter(|b| !b.is_empty()) {
        None => Ok(None),
        Some(b) => {
            let valid = b.len() <= 41
                && b.split_once('-').is_some_and(|(ms, seq)| {
                    !ms.is_empty()
                        && !seq.is_empty()
                        && ms.chars().all(|c| c.is_ascii_digit())
                        && seq.chars().all(|c| c.is_ascii_digit())
                });
            if valid {
                Ok(Some(b))
            } else {
                Err(ConsoleError::BadRequest(
                    "before: not a list position".into(),
                ))
            }
        }
    }
}

/// `path?k=v&…` from the pairs whose value is set.
fn link(path: &str, pairs: &[(&str, Option<String>)]) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            query.append_pair(k, v);
        }
    }
    let query = query.finish();
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    }
}

pub async fn to_overview() -> Redirect {
    Redirect::permanent("/console/")
}

/// Per queue counts and lag, Didit budget and balance, processes alive, recent actions.
pub async fn overview(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(notice): Query<Notice>,
) -> Result<Response, ConsoleError> {
    let access = Access::of(&state.console, &headers);
    let mut queues = Vec::new();
    let mut window = std::time::Duration::ZERO;
    for (index, queue) in QUEUES.iter().enumerate() {
        let stats = state.queue.stats(queue).await?;
        let (done, since) = state
            .console
            .throughput
            .since_oldest(&state.metrics, queue, index);
        window = window.max(since);
        queues.push((*queue, stats, done));
    }
    let window = if window < std::time::Duration::from_secs(59 * 60) {
        format!(
            "{} (since it started)",
            html::age(window.as_millis() as u64)
        )
    } else {
        "hour".to_owned()
    };
    let pause = state.store.pause().await?;
    let processes = state.store.processes_alive().await?;
    let reviews = state.store.review_count().await?;
    let balance = state.metrics.didit_balance.get();
    let budget = state.console.limiter.usage().await?;
    let recent = state.store.console_log_recent(15).await?;
    let body = html! {
        h1 { "Overview" }
        (html::refresh_toggle())
        (html::notice(notice.notice.as_deref()))
        h2 { "Queues" }
        table #queues {
            thead { tr {
                th { "queue" } th { "ready" } th { "scheduled" } th { "in flight" }
                th { "dead" } th { "lag" } th { "done, last hour*" }
            } }
            tbody {
                @for (q, stats, done) in &queues {
                    tr {
                        td { (q) }
                        td #{"q-" (q) "-ready"} { (stats.ready) }
                        td #{"q-" (q) "-scheduled"} { (stats.scheduled) }
                        td #{"q-" (q) "-in_flight"} { (stats.in_flight) }
                        td #{"q-" (q) "-dead"} { (stats.dead) }
                        td { (html::age(stats.lag_ms)) }
                        td #{"q-" (q) "-done"} { (done) }
                    }
                }
            }
        }
        p.hint {
            "* finished by this process over the last " (window)
            ", from its own metrics; every process counts its own."
        }
        h2 { "Fleet" }
        dl.facts {
            dt { "processes alive" } dd #processes { (processes) }
            dt { "Didit calls" }
            dd #paused {
                @match pause {
                    Some(p) => span.bad { "paused: " (p.as_str()) },
                    None => "running",
                }
            }
            dt { "balance" }
            dd #balance {
                (format!("{balance:.2}")) " USD "
                span.hint { "(sampled every 5 min by this process)" }
            }
            dt { "held for review" }
            dd #reviews-waiting { a href="/console/reviews" { (reviews) } }
        }
        h2 { "Didit budget (this 60 s window, whole fleet)" }
        table #budget {
            thead { tr { th { "bucket" } th { "used" } th { "limit" } th { "use" } } }
            tbody {
                @for (scope, used, limit) in &budget {
                    @let share = if *limit == 0 { 0.0 } else { *used as f64 * 100.0 / f64::from(*limit) };
                    tr {
                        td { (scope.as_str()) }
                        td #{"budget-" (scope.as_str())} { (used) }
                        td { (limit) }
                        td {
                            meter min="0" max="100" value=(format!("{share:.0}")) {}
                            " " (format!("{share:.0}%"))
                        }
                    }
                }
            }
        }
        h2 { "Recent console actions" }
        @if recent.is_empty() {
            p.hint { "none yet" }
        } @else {
            table #actions {
                thead { tr { th { "when" } th { "action" } th { "operator" } th { "on" } } }
                tbody {
                    @for entry in &recent {
                        tr {
                            td { (html::time(entry["at_ms"].as_u64().unwrap_or(0))) }
                            td { (text(&entry["action"])) }
                            td { (text(&entry["operator"])) }
                            td { (text(&entry["target"])) }
                        }
                    }
                }
            }
        }
    };
    Ok(render("Overview", &access, body))
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// `?q=` searches; without it the page lists recent verifications, filtered by `status`,
/// `decider` and `age`, a page (`limit`) at a time from `before`.
#[derive(Debug, Default, Deserialize)]
pub struct SessionsQuery {
    q: Option<String>,
    status: Option<String>,
    decider: Option<String>,
    age: Option<String>,
    before: Option<String>,
    limit: Option<usize>,
}

/// The statuses the sessions list can be filtered by: what outcome events carry.
fn status_filters() -> Vec<&'static str> {
    let mut statuses = vec![SessionStatus::NotStarted.as_str()];
    statuses.extend(
        SessionStatus::ALL
            .iter()
            .filter(|s| EventType::for_status(s).is_some())
            .map(SessionStatus::as_str),
    );
    statuses.push("failed");
    statuses
}

const DECIDER_FILTERS: [&str; 4] = ["didit", "rule", "operator", "kyc-worker"];
const AGE_FILTERS: [(&str, &str, u64); 4] = [
    ("1h", "last hour", 3_600_000),
    ("24h", "last 24 hours", 86_400_000),
    ("7d", "last 7 days", 604_800_000),
    ("30d", "last 30 days", 2_592_000_000),
];

/// One verification on the sessions list, at its latest event.
struct ListedRequest {
    event: StreamEvent,
}

/// The sessions page: a search, or the list of recent verifications.
pub async fn sessions(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<SessionsQuery>,
) -> Result<Response, ConsoleError> {
    let access = Access::of(&state.console, &headers);
    let q = query.q.as_deref().map(str::trim).unwrap_or("");
    if q.is_empty() {
        return sessions_list(&state, &access, &query).await;
    }
    if q.len() > 256 {
        return Err(ConsoleError::BadRequest("the search is too long".into()));
    }
    let requests = find(&state, q).await?;
    let mut found = Vec::new();
    for id in requests {
        let Some(record) = state.store.request(&id).await? else {
            continue;
        };
        let session = match record.session_id {
            Some(sid) => state.store.session(sid).await?,
            None => None,
        };
        let trail = state.store.audit_trail(&id).await?;
        found.push((id, record, session, trail));
    }
    let body = html! {
        h1 { "Sessions" }
        // A read-only viewer's search is not echoed: the page may be shown or shared.
        (search_form(if access.admin { q } else { "" }))
        p { a #all-sessions href="/console/sessions" { "« all recent verifications" } }
        @if found.is_empty() {
            p #none { "Nothing found." }
        }
        @for (id, record, session, trail) in &found {
            section.request {
                h2 { "request " code { (id.as_str()) } }
                dl.facts {
                    dt { "vendor_data" } dd.vendor-data { (pii(&access, &record.vendor_data)) }
                    dt { "session" }
                    dd.session-id {
                        @match record.session_id {
                            Some(s) => (s),
                            None => "none yet",
                        }
                    }
                    dt { "last status" } dd.last-status { (record.last_status.as_ref().map_or("—", |s| s.as_str())) }
                    dt { "decided by" } dd { (record.decided_by.as_deref().unwrap_or("—")) }
                    dt { "status at Didit" }
                    dd {
                        (session.as_ref().and_then(|s| s.status.as_ref()).map(|s| s.as_str()).unwrap_or("—"))
                    }
                    @if record.cancelled { dt { "cancelled" } dd { "yes" } }
                }
                h3 { "Timeline" }
                ol.timeline {
                    @for step in trail {
                        li {
                            time { (html::time(step["at_ms"].as_u64().unwrap_or(0))) }
                            " "
                            span.step { (text(&step["step"])) }
                            @if let Value::Object(fields) = step {
                                @for (k, v) in fields.iter().filter(|(k, _)| *k != "at_ms" && *k != "step") {
                                    " "
                                    span.kv {
                                        b { (k) } "="
                                        @match v {
                                            Value::String(s) => (s),
                                            other => (other.to_string()),
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(render("Sessions", &access, body))
}

fn search_form(q: &str) -> Markup {
    html! {
        form.search method="get" action="/console/sessions" {
            input type="search" name="q" #q value=(q)
                placeholder="request_id, session_id or vendor_data" maxlength="256";
            button type="submit" #search { "Search" }
        }
    }
}

/// Recent verifications, newest first, each at its latest event.
async fn sessions_list(
    state: &AppState,
    access: &Access,
    query: &SessionsQuery,
) -> Result<Response, ConsoleError> {
    let limit = limit(query.limit)?;
    let before = cursor(query.before.as_deref())?;
    let statuses = status_filters();
    let status = query.status.as_deref().filter(|s| !s.is_empty());
    if status.is_some_and(|s| !statuses.contains(&s)) {
        return Err(ConsoleError::BadRequest(format!(
            "status: one of {}",
            statuses.join(", ")
        )));
    }
    let decider = query.decider.as_deref().filter(|s| !s.is_empty());
    if decider.is_some_and(|d| !DECIDER_FILTERS.contains(&d)) {
        return Err(ConsoleError::BadRequest(format!(
            "decider: one of {}",
            DECIDER_FILTERS.join(", ")
        )));
    }
    let age = query.age.as_deref().filter(|s| !s.is_empty());
    let since_ms = match age {
        None => 0,
        Some(a) => match AGE_FILTERS.iter().find(|(key, _, _)| *key == a) {
            Some((_, _, ms)) => now_ms().saturating_sub(*ms),
            None => {
                return Err(ConsoleError::BadRequest(
                    "age: one of 1h, 24h, 7d, 30d".into(),
                ))
            }
        },
    };
    let mut rows: Vec<ListedRequest> = Vec::new();
    let mut shown: HashSet<String> = HashSet::new();
    let mut position = before.map(str::to_owned);
    let mut scanned = 0;
    let mut more = false;
    'scan: while scanned < MAX_SCAN {
        let batch = state
            .store
            .events_newest_first(position.as_deref(), since_ms, SCAN_BATCH)
            .await?;
        let exhausted = batch.len() < SCAN_BATCH;
        let ids: Vec<RequestId> = batch
            .iter()
            .map(|e| RequestId::parse(e.field("request_id")).ok())
            .collect::<Option<Vec<_>>>()
            .unwrap_or_default();
        let states = if ids.len() == batch.len() {
            state.store.request_states(&ids).await?
        } else {
            // An event without a valid request id: read the states one by one.
            let mut states = Vec::with_capacity(batch.len());
            for e in &batch {
                match RequestId::parse(e.field("request_id")) {
                    Ok(id) => states.extend(state.store.request_states(&[id]).await?),
                    Err(_) => states.push(None),
                }
            }
            states
        };
        for (event, current) in batch.into_iter().zip(states) {
            scanned += 1;
            position = Some(event.entry_id.clone());
            if event.field("type") == EventType::Erased.as_str() {
                continue;
            }
            let request = event.field("request_id").to_owned();
            let latest = current.as_ref().is_none_or(|c| event.is_current(c));
            if !latest || shown.contains(&request) {
                continue;
            }
            if status.is_some_and(|s| event.field("status") != s) {
                continue;
            }
            if decider.is_some_and(|d| event.field("decided_by").split(':').next() != Some(d)) {
                continue;
            }
            shown.insert(request);
            rows.push(ListedRequest { event });
            if rows.len() == limit {
                more = true;
                break 'scan;
            }
        }
        if exhausted {
            break;
        }
        more = true;
    }
    let filters = |before: Option<String>| {
        link(
            "/console/sessions",
            &[
                ("status", status.map(str::to_owned)),
                ("decider", decider.map(str::to_owned)),
                ("age", age.map(str::to_owned)),
                ("limit", query.limit.map(|l| l.to_string())),
                ("before", before),
            ],
        )
    };
    let next = more.then(|| filters(position.clone()));
    let first = before.is_some().then(|| filters(None));
    let body = html! {
        h1 { "Sessions" }
        (search_form(""))
        form.filters method="get" action="/console/sessions" {
            label { "status "
                select name="status" #status-filter {
                    option value="" { "any" }
                    @for s in &statuses {
                        option value=(s) selected[status == Some(*s)] { (s) }
                    }
                }
            }
            label { " decided by "
                select name="decider" #decider-filter {
                    option value="" { "anyone" }
                    @for d in DECIDER_FILTERS {
                        option value=(d) selected[decider == Some(d)] { (d) }
                    }
                }
            }
            label { " age "
                select name="age" #age-filter {
                    option value="" { "any" }
                    @for (key, label, _) in AGE_FILTERS {
                        option value=(key) selected[age == Some(key)] { (label) }
                    }
                }
            }
            @if let Some(l) = query.limit { input type="hidden" name="limit" value=(l); }
            " "
            button type="submit" #apply-filters { "Filter" }
        }
        (html::refresh_toggle())
        @if rows.is_empty() {
            p #none { "No verification matches." }
        } @else {
            table #sessions-list {
                thead { tr {
                    th { "last change" } th { "request" } th { "session" } th { "status" }
                    th { "decided by" } th { "vendor_data" }
                } }
                tbody {
                    @for row in &rows {
                        @let e = &row.event;
                        tr.session-row data-request=(e.field("request_id")) {
                            td { (html::time(crate::queue::entry_ms(&e.entry_id))) }
                            td { a href=(link("/console/sessions", &[("q", Some(e.field("request_id").to_owned()))])) {
                                code { (e.field("request_id")) }
                            } }
                            td { code { (e.field("session_id")) } }
                            td.status { (e.field("status")) }
                            td.decider { (e.field("decided_by")) }
                            td.vendor-data { (pii(access, e.field("vendor_data"))) }
                        }
                    }
                }
            }
        }
        (html::pager(first.as_deref(), next.as_deref()))
        p.hint { "Each verification once, at its latest outcome event, newest first; the outcome stream keeps events for events.retention." }
    };
    Ok(render("Sessions", access, body))
}

/// Request ids a search names: as a request id, a session id, or a vendor_data.
async fn find(state: &AppState, q: &str) -> Result<Vec<RequestId>, ConsoleError> {
    let mut found = Vec::new();
    if let Ok(id) = RequestId::parse(q) {
        if state.store.request(&id).await?.is_some() {
            found.push(id);
        }
    }
    if let Ok(sid) = q.parse::<Uuid>() {
        if let Some(session) = state.store.session(sid).await? {
            found.extend(session.requests);
        }
    }
    let (by_subject, _) = state.store.subject(q).await?;
    found.extend(by_subject);
    found.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    found.dedup();
    Ok(found)
}

/// `?page=` (from 1) and `?limit=` of the review queue.
#[derive(Debug, Default, Deserialize)]
pub struct ReviewsQuery {
    notice: Option<String>,
    page: Option<usize>,
    limit: Option<usize>,
}

/// An operator action queued on a held session, as the review queue shows it.
enum Pending {
    /// Its job still waits or runs.
    Waiting {
        action: String,
        operator: String,
        at_ms: u64,
    },
    /// Its job ran (or died) and the session is still held: it did not go through.
    NotDone { action: String, operator: String },
}

/// Sessions held In Review, with scores, warnings, matched rules, and the operator's buttons.
pub async fn reviews(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<ReviewsQuery>,
) -> Result<Response, ConsoleError> {
    let access = Access::of(&state.console, &headers);
    let limit = limit(query.limit)?;
    let page = query.page.unwrap_or(1).max(1);
    let total = state.store.review_count().await? as usize;
    let items = state.store.reviews_page((page - 1) * limit, limit).await?;
    let mut rows = Vec::with_capacity(items.len());
    for item in items {
        let mut vendor = Vec::new();
        for r in &item.requests {
            if let Some(record) = state.store.request(r).await? {
                vendor.push(pii(&access, &record.vendor_data));
            }
        }
        let pending = match state.store.review_pending(item.session_id).await? {
            Some(p) => {
                let action = text(&p["action"]).to_owned();
                let operator = text(&p["operator"]).to_owned();
                if state
                    .queue
                    .job_waiting(OperatorAction::QUEUE, text(&p["job_id"]))
                    .await?
                {
                    Some(Pending::Waiting {
                        action,
                        operator,
                        at_ms: p["at_ms"].as_u64().unwrap_or(0),
                    })
                } else {
                    Some(Pending::NotDone { action, operator })
                }
            }
            None => None,
        };
        rows.push((item, vendor, pending));
    }
    let page_link = |n: usize| {
        link(
            "/console/reviews",
            &[
                ("page", Some(n.to_string())),
                ("limit", query.limit.map(|l| l.to_string())),
            ],
        )
    };
    let first = (page > 1).then(|| page_link(1));
    let next = (page * limit < total).then(|| page_link(page + 1));
    let body = html! {
        h1 { "Review queue" }
        (html::refresh_toggle())
        (html::notice(query.notice.as_deref()))
        @if !access.admin {
            p.hint {
                "Read-only: " a href="/console/login" { "log in" }
                " with the admin token to approve, decline or ask for a resubmission."
            }
        }
        @if rows.is_empty() {
            p #none { "No session is held for review." }
        } @else {
            p.hint #review-range {
                "sessions " ((page - 1) * limit + 1) "–" ((page - 1) * limit + rows.len())
                " of " (total) ", longest held first"
            }
            table #reviews {
                thead { tr {
                    th { "session" } th { "held since" } th { "held by" } th { "vendor_data" }
                    th { "scores" } th { "warnings" } th { "rules" } th {}
                } }
                tbody {
                    @for (item, vendor, pending) in &rows {
                        (review_row(&access, item, vendor, pending.as_ref()))
                    }
                }
            }
        }
        (html::pager(first.as_deref(), next.as_deref()))
    };
    Ok(render("Reviews", &access, body))
}

fn review_row(
    access: &Access,
    item: &ReviewItem,
    vendor: &[String],
    pending: Option<&Pending>,
) -> Markup {
    let sid = item.session_id;
    let rules = &item.data["rules"];
    html! {
        tr #{"review-" (sid)} {
            td { a href={"/console/sessions?q=" (sid)} { code { (sid) } } }
            td { (html::time(item.since_ms)) }
            td { (item.decided_by) }
            td {
                @for (i, v) in vendor.iter().enumerate() {
                    @if i > 0 { br; }
                    (v)
                }
            }
            td {
                @if let Value::Object(map) = &item.data["scores"] {
                    @for (k, v) in map { div { (k) ": " (v.to_string()) } }
                }
            }
            td {
                @if let Value::Array(list) = &item.data["warnings"] {
                    @for w in list {
                        div { span.risk { (text(&w["risk"])) } " " (text(&w["feature"])) }
                    }
                }
            }
            td.rules #{"rules-" (sid)} {
                @match &rules["matched"] {
                    Value::Array(list) if !list.is_empty() => {
                        @for m in list {
                            div.rule title=(m["values"].to_string()) {
                                b { (text(&m["rule"])) } " → " (text(&m["action"]))
                                @if m["shadow"].as_bool() == Some(true) { " (shadow)" }
                            }
                        }
                    }
                    Value::Array(_) => {
                        span.hint { "none matched (rules " (text(&rules["version"])) ")" }
                    }
                    _ => span.hint { "no rules evaluated" },
                }
            }
            td {
                @match pending {
                    Some(Pending::Waiting { action, operator, at_ms }) => {
                        span.pending #{"pending-" (sid)} {
                            (action) " by " (operator) ": pending since "
                            (html::time(*at_ms))
                        }
                    }
                    other => {
                        @if let Some(Pending::NotDone { action, operator }) = other {
                            p.error #{"not-done-" (sid)} {
                                (action) " by " (operator) " did not go through: see "
                                a href="/console/dead?queue=operator" { "the dead set" }
                            }
                        }
                        @if access.admin {
                            form.act method="post" action={"/console/reviews/" (sid)} {
                                @if access.operator.is_none() {
                                    input name="operator" placeholder="your name" required
                                        maxlength="64" pattern="[A-Za-z0-9._@\\-]+";
                                }
                                input name="note" placeholder="note to Didit (optional)" maxlength="200";
                                button.approve name="action" value="approve" #{"approve-" (sid)} { "Approve" }
                                button.decline name="action" value="decline" #{"decline-" (sid)} { "Decline" }
                                button name="action" value="resubmit" #{"resubmit-" (sid)} { "Resubmit" }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `?queue=` shows one queue's dead jobs a page at a time (`before`, `limit`).
#[derive(Debug, Default, Deserialize)]
pub struct DeadQuery {
    notice: Option<String>,
    queue: Option<String>,
    before: Option<String>,
    limit: Option<usize>,
}

/// Dead jobs per queue: reason, attempts, payload (masked unless admin), and actions.
pub async fn dead(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<DeadQuery>,
) -> Result<Response, ConsoleError> {
    let access = Access::of(&state.console, &headers);
    let limit = limit(query.limit)?;
    let before = cursor(query.before.as_deref())?;
    let only = match query.queue.as_deref().filter(|q| !q.is_empty()) {
        Some(q) => Some(
            QUEUES
                .iter()
                .copied()
                .find(|known| *known == q)
                .ok_or_else(|| ConsoleError::NotFound("no such queue".into()))?,
        ),
        None => None,
    };
    let mut sections = Vec::new();
    for queue in QUEUES
        .iter()
        .copied()
        .filter(|q| only.is_none_or(|o| o == *q))
    {
        let total = state.queue.stats(queue).await?.dead;
        // One more than shown says whether an older page exists.
        let mut jobs = state.queue.dead_page(queue, before, limit + 1).await?;
        let more = jobs.len() > limit;
        jobs.truncate(limit);
        let page_link = |before: Option<String>| {
            link(
                "/console/dead",
                &[
                    ("queue", Some(queue.to_owned())),
                    ("limit", query.limit.map(|l| l.to_string())),
                    ("before", before),
                ],
            )
        };
        let next = more
            .then(|| jobs.last().map(|j| page_link(Some(j.entry_id.clone()))))
            .flatten();
        let first = before.is_some().then(|| page_link(None));
        sections.push((queue, total, jobs, first, next));
    }
    let body = html! {
        h1 { "Dead set" }
        (html::refresh_toggle())
        (html::notice(query.notice.as_deref()))
        @if only.is_some() {
            p { a #all-queues href="/console/dead" { "« every queue" } }
        }
        @for (q, total, jobs, first, next) in &sections {
            section.dead #{"dead-" (q)} {
                h2 { (q) " " span.count { (total) } }
                @if jobs.is_empty() {
                    p.hint { "empty" }
                } @else {
                    @if access.admin {
                        div.bulk {
                            form.inline method="post" action={"/console/dead/" (q) "/replay-all"} {
                                button #{"replay-all-" (q)} { "Replay all" }
                            }
                            " "
                            form.inline method="post" action={"/console/dead/" (q) "/purge"} {
                                select name="older_than_s" {
                                    option value="0" { "all" }
                                    option value="3600" { "older than 1 h" }
                                    option value="86400" { "older than 1 day" }
                                    option value="604800" { "older than 7 days" }
                                }
                                " "
                                button.decline #{"purge-" (q)} { "Purge" }
                            }
                        }
                    }
                    table {
                        thead { tr {
                            th { "died" } th { "job" } th { "attempts" } th { "reason" }
                            th { "payload" } th {}
                        } }
                        tbody {
                            @for job in jobs {
                                tr.dead-job #{"dead-job-" (job.entry_id)} {
                                    td { (html::time(job.died_at_ms())) }
                                    td { code { (job.job_id) } }
                                    td { (job.attempts) }
                                    td.reason { (job.reason) }
                                    td { code.payload { (html::payload(&access, &job.payload)) } }
                                    td {
                                        @if access.admin {
                                            form.inline method="post" action={"/console/dead/" (q) "/replay"} {
                                                input type="hidden" name="entry_id" value=(job.entry_id);
                                                button.replay #{"replay-" (job.job_id)} { "Replay" }
                                            }
                                            " "
                                            form.inline.confirm method="post" action={"/console/dead/" (q) "/delete"}
                                                data-confirm="Delete this dead job for good?" {
                                                input type="hidden" name="entry_id" value=(job.entry_id);
                                                button.delete #{"delete-" (job.job_id)} { "Delete" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    @if only.is_some() {
                        (html::pager(first.as_deref(), next.as_deref()))
                    } @else if next.is_some() {
                        p { a.more #{"more-" (q)} href=(link("/console/dead", &[("queue", Some(q.to_string())), ("limit", query.limit.map(|l| l.to_string()))])) {
                            "all " (total) " dead " (q) " jobs, a page at a time »"
                        } }
                    }
                }
            }
        }
    };
    Ok(render("Dead set", &access, body))
}

/// The login form.
pub async fn login(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let access = Access::of(&state.console, &headers);
    render("Log in", &access, login_form(&state, None))
}

pub(super) fn login_form(state: &AppState, error: Option<&str>) -> Markup {
    html! {
        h1 { "Log in" }
        @if state.console.admin_token.is_none() {
            p {
                "No admin token is configured (" code { "KYC__HTTP__ADMIN_TOKEN" }
                "): the console is read-only."
            }
        } @else {
            @if let Some(e) = error { p.error { (e) } }
            form.login method="post" action="/console/login" {
                label { "Your name "
                    input name="operator" #operator required maxlength="64"
                        pattern="[A-Za-z0-9._@\\-]+" autocomplete="username";
                }
                label { "Admin token "
                    input type="password" name="token" #token required autocomplete="current-password";
                }
                button type="submit" #login { "Log in" }
            }
            p.hint {
                "Your name is recorded with every action as " code { "operator:<name>" } "."
            }
        }
    }
}
