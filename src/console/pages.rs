//! The console's pages: each reads what it shows and renders it; none of them writes.

use std::fmt::Write;

use axum::{
    extract::{Query, State},
    http::HeaderMap,
    response::{IntoResponse, Redirect, Response},
};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::{
    html::{self, esc, pii},
    html_headers, Access, ConsoleError,
};
use crate::{domain::RequestId, http::AppState, jobs::QUEUES, store::ReviewItem};

/// `?notice=` after an action redirected here.
#[derive(Debug, Default, Deserialize)]
pub struct Notice {
    notice: Option<String>,
}

fn render(title: &str, access: &Access, body: &str) -> Response {
    (html_headers(), html::page(title, Some(access), body)).into_response()
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
    let mut body = String::from("<h1>Overview</h1>");
    body.push_str(&html::notice(notice.notice.as_deref()));
    body.push_str(
        "<h2>Queues</h2><table id=\"queues\"><thead><tr><th>queue</th><th>ready</th><th>scheduled</th><th>in flight</th><th>dead</th><th>lag</th><th>done, last hour*</th></tr></thead><tbody>",
    );
    let mut window = std::time::Duration::ZERO;
    for (index, queue) in QUEUES.iter().enumerate() {
        let stats = state.queue.stats(queue).await?;
        let (done, since) = state
            .console
            .throughput
            .since_oldest(&state.metrics, queue, index);
        window = window.max(since);
        let _ = write!(
            body,
            "<tr><td>{q}</td><td id=\"q-{q}-ready\">{}</td><td id=\"q-{q}-scheduled\">{}</td><td id=\"q-{q}-in_flight\">{}</td><td id=\"q-{q}-dead\">{}</td><td>{}</td><td id=\"q-{q}-done\">{done}</td></tr>",
            stats.ready,
            stats.scheduled,
            stats.in_flight,
            stats.dead,
            html::age(stats.lag_ms),
            q = esc(queue),
        );
    }
    let window = if window < std::time::Duration::from_secs(59 * 60) {
        format!(
            "{} (since it started)",
            html::age(window.as_millis() as u64)
        )
    } else {
        "hour".to_owned()
    };
    let _ = write!(
        body,
        "</tbody></table><p class=\"hint\">* finished by this process over the last {window}, from its own metrics; every process counts its own.</p>"
    );
    let pause = state.store.pause().await?;
    let processes = state.store.processes_alive().await?;
    let reviews = state.store.review_count().await?;
    let balance = state.metrics.didit_balance.get();
    let _ = write!(
        body,
        "<h2>Fleet</h2><dl class=\"facts\"><dt>processes alive</dt><dd id=\"processes\">{processes}</dd><dt>Didit calls</dt><dd id=\"paused\">{}</dd><dt>balance</dt><dd id=\"balance\">{balance:.2} USD <span class=\"hint\">(sampled every 5 min by this process)</span></dd><dt>held for review</dt><dd id=\"reviews-waiting\"><a href=\"/console/reviews\">{reviews}</a></dd></dl>",
        match pause {
            Some(p) => format!("<span class=\"bad\">paused: {}</span>", esc(p.as_str())),
            None => "running".to_owned(),
        },
    );
    body.push_str(
        "<h2>Didit budget (this 60 s window, whole fleet)</h2><table id=\"budget\"><thead><tr><th>bucket</th><th>used</th><th>limit</th><th>use</th></tr></thead><tbody>",
    );
    for (scope, used, limit) in state.console.limiter.usage().await? {
        let share = if limit == 0 {
            0.0
        } else {
            used as f64 * 100.0 / f64::from(limit)
        };
        let _ = write!(
            body,
            "<tr><td>{b}</td><td id=\"budget-{b}\">{used}</td><td>{limit}</td><td><meter min=\"0\" max=\"100\" value=\"{share:.0}\"></meter> {share:.0}%</td></tr>",
            b = esc(scope.as_str()),
        );
    }
    body.push_str("</tbody></table><h2>Recent console actions</h2>");
    let recent = state.store.console_log_recent(15).await?;
    if recent.is_empty() {
        body.push_str("<p class=\"hint\">none yet</p>");
    } else {
        body.push_str("<table id=\"actions\"><thead><tr><th>when</th><th>action</th><th>operator</th><th>on</th></tr></thead><tbody>");
        for entry in recent {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                html::time(entry["at_ms"].as_u64().unwrap_or(0)),
                esc(text(&entry["action"])),
                esc(text(&entry["operator"])),
                esc(text(&entry["target"])),
            );
        }
        body.push_str("</tbody></table>");
    }
    Ok(render("Overview", &access, &body))
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// `?q=`: a request id, a session id or a vendor_data.
#[derive(Debug, Default, Deserialize)]
pub struct Search {
    q: Option<String>,
}

/// Finds requests by request id, session id or vendor_data and shows each one's audit
/// trail as a timeline.
pub async fn sessions(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(search): Query<Search>,
) -> Result<Response, ConsoleError> {
    let access = Access::of(&state.console, &headers);
    let q = search.q.as_deref().map(str::trim).unwrap_or("");
    let mut body = format!(
        "<h1>Sessions</h1><form method=\"get\" action=\"/console/sessions\" class=\"search\"><input type=\"search\" name=\"q\" id=\"q\" value=\"{}\" placeholder=\"request_id, session_id or vendor_data\" maxlength=\"256\" autofocus><button type=\"submit\" id=\"search\">Search</button></form>",
        // A read-only viewer's search is not echoed: the page may be shown or shared.
        if access.admin { esc(q) } else { String::new() }
    );
    if q.is_empty() {
        return Ok(render("Sessions", &access, &body));
    }
    if q.len() > 256 {
        return Err(ConsoleError::BadRequest("the search is too long".into()));
    }
    let requests = find(&state, q).await?;
    if requests.is_empty() {
        body.push_str("<p id=\"none\">Nothing found.</p>");
        return Ok(render("Sessions", &access, &body));
    }
    for id in requests {
        let Some(record) = state.store.request(&id).await? else {
            continue;
        };
        let session = match record.session_id {
            Some(sid) => state.store.session(sid).await?,
            None => None,
        };
        let _ = write!(
            body,
            "<section class=\"request\"><h2>request <code>{}</code></h2><dl class=\"facts\"><dt>vendor_data</dt><dd class=\"vendor-data\">{}</dd><dt>session</dt><dd class=\"session-id\">{}</dd><dt>last status</dt><dd class=\"last-status\">{}</dd><dt>decided by</dt><dd>{}</dd><dt>status at Didit</dt><dd>{}</dd>{}</dl>",
            esc(id.as_str()),
            pii(&access, &record.vendor_data),
            record
                .session_id
                .map(|s| s.to_string())
                .unwrap_or_else(|| "none yet".into()),
            esc(record.last_status.as_ref().map_or("—", |s| s.as_str())),
            esc(record.decided_by.as_deref().unwrap_or("—")),
            esc(session
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .map(|s| s.as_str())
                .unwrap_or("—")),
            if record.cancelled {
                "<dt>cancelled</dt><dd>yes</dd>"
            } else {
                ""
            },
        );
        body.push_str("<h3>Timeline</h3><ol class=\"timeline\">");
        for step in state.store.audit_trail(&id).await? {
            let mut details = String::new();
            if let Value::Object(fields) = &step {
                for (k, v) in fields.iter().filter(|(k, _)| *k != "at_ms" && *k != "step") {
                    let shown = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    let _ = write!(
                        details,
                        " <span class=\"kv\"><b>{}</b>={}</span>",
                        esc(k),
                        esc(&shown)
                    );
                }
            }
            let _ = write!(
                body,
                "<li><time>{}</time> <span class=\"step\">{}</span>{details}</li>",
                html::time(step["at_ms"].as_u64().unwrap_or(0)),
                esc(text(&step["step"])),
            );
        }
        body.push_str("</ol></section>");
    }
    Ok(render("Sessions", &access, &body))
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

/// Sessions held In Review, with scores and warnings, and the operator's buttons.
pub async fn reviews(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(notice): Query<Notice>,
) -> Result<Response, ConsoleError> {
    let access = Access::of(&state.console, &headers);
    let mut body = String::from("<h1>Review queue</h1>");
    body.push_str(&html::notice(notice.notice.as_deref()));
    if !access.admin {
        body.push_str("<p class=\"hint\">Read-only: <a href=\"/console/login\">log in</a> with the admin token to approve, decline or ask for a resubmission.</p>");
    }
    let items = state.store.reviews(200).await?;
    if items.is_empty() {
        body.push_str("<p id=\"none\">No session is held for review.</p>");
        return Ok(render("Reviews", &access, &body));
    }
    body.push_str("<table id=\"reviews\"><thead><tr><th>session</th><th>held since</th><th>held by</th><th>vendor_data</th><th>scores</th><th>warnings</th><th>rules</th><th></th></tr></thead><tbody>");
    for item in items {
        body.push_str(&review_row(&state, &access, &item).await?);
    }
    body.push_str("</tbody></table>");
    Ok(render("Reviews", &access, &body))
}

async fn review_row(
    state: &AppState,
    access: &Access,
    item: &ReviewItem,
) -> Result<String, ConsoleError> {
    let mut vendor = Vec::new();
    for r in &item.requests {
        if let Some(record) = state.store.request(r).await? {
            vendor.push(pii(access, &record.vendor_data));
        }
    }
    let mut scores = String::new();
    if let Value::Object(map) = &item.data["scores"] {
        for (k, v) in map {
            let _ = write!(scores, "<div>{}: {}</div>", esc(k), esc(&v.to_string()));
        }
    }
    let mut warnings = String::new();
    if let Value::Array(list) = &item.data["warnings"] {
        for w in list {
            let _ = write!(
                warnings,
                "<div><span class=\"risk\">{}</span> {}</div>",
                esc(text(&w["risk"])),
                esc(text(&w["feature"])),
            );
        }
    }
    let rules = match &item.data["rules"]["matched"] {
        Value::Array(list) => list
            .iter()
            .map(|m| esc(text(&m["rule"])))
            .collect::<Vec<_>>()
            .join(", "),
        _ => String::new(),
    };
    let sid = item.session_id;
    let buttons = if access.admin {
        let operator_field = match &access.operator {
            Some(_) => String::new(),
            None => "<input name=\"operator\" placeholder=\"your name\" required maxlength=\"64\" pattern=\"[A-Za-z0-9._@\\-]+\">".to_owned(),
        };
        format!(
            "<form method=\"post\" action=\"/console/reviews/{sid}\" class=\"act\">{operator_field}<input name=\"note\" placeholder=\"note to Didit (optional)\" maxlength=\"200\"><button name=\"action\" value=\"approve\" class=\"approve\" id=\"approve-{sid}\">Approve</button><button name=\"action\" value=\"decline\" class=\"decline\" id=\"decline-{sid}\">Decline</button><button name=\"action\" value=\"resubmit\" id=\"resubmit-{sid}\">Resubmit</button></form>"
        )
    } else {
        String::new()
    };
    Ok(format!(
        "<tr id=\"review-{sid}\"><td><a href=\"/console/sessions?q={sid}\"><code>{sid}</code></a></td><td>{}</td><td>{}</td><td>{}</td><td>{scores}</td><td>{warnings}</td><td>{rules}</td><td>{buttons}</td></tr>",
        html::time(item.since_ms),
        esc(&item.decided_by),
        vendor.join("<br>"),
    ))
}

/// Dead jobs per queue: reason, attempts, payload (masked unless admin), and actions.
pub async fn dead(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(notice): Query<Notice>,
) -> Result<Response, ConsoleError> {
    let access = Access::of(&state.console, &headers);
    let mut body = String::from("<h1>Dead set</h1>");
    body.push_str(&html::notice(notice.notice.as_deref()));
    for queue in QUEUES {
        let jobs = state.queue.dead_list(queue, 100).await?;
        let q = esc(queue);
        let _ = write!(
            body,
            "<section class=\"dead\" id=\"dead-{q}\"><h2>{q} <span class=\"count\">{}</span></h2>",
            jobs.len()
        );
        if jobs.is_empty() {
            body.push_str("<p class=\"hint\">empty</p></section>");
            continue;
        }
        if access.admin {
            let _ = write!(
                body,
                "<div class=\"bulk\"><form method=\"post\" action=\"/console/dead/{q}/replay-all\" class=\"inline\"><button id=\"replay-all-{q}\">Replay all</button></form> <form method=\"post\" action=\"/console/dead/{q}/purge\" class=\"inline\"><select name=\"older_than_s\"><option value=\"0\">all</option><option value=\"3600\">older than 1 h</option><option value=\"86400\">older than 1 day</option><option value=\"604800\">older than 7 days</option></select> <button id=\"purge-{q}\" class=\"decline\">Purge</button></form></div>"
            );
        }
        body.push_str("<table><thead><tr><th>died</th><th>job</th><th>attempts</th><th>reason</th><th>payload</th><th></th></tr></thead><tbody>");
        for job in jobs {
            let entry = esc(&job.entry_id);
            let replay = if access.admin {
                format!(
                    "<form method=\"post\" action=\"/console/dead/{q}/replay\"><input type=\"hidden\" name=\"entry_id\" value=\"{entry}\"><button class=\"replay\" id=\"replay-{}\">Replay</button></form>",
                    esc(&job.job_id)
                )
            } else {
                String::new()
            };
            let _ = write!(
                body,
                "<tr class=\"dead-job\"><td>{}</td><td><code>{}</code></td><td>{}</td><td class=\"reason\">{}</td><td><code class=\"payload\">{}</code></td><td>{replay}</td></tr>",
                html::time(job.died_at_ms()),
                esc(&job.job_id),
                job.attempts,
                esc(&job.reason),
                html::payload(&access, &job.payload),
            );
        }
        body.push_str("</tbody></table></section>");
    }
    Ok(render("Dead set", &access, &body))
}

/// The login form.
pub async fn login(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let access = Access::of(&state.console, &headers);
    render("Log in", &access, &login_form(&state, None))
}

pub(super) fn login_form(state: &AppState, error: Option<&str>) -> String {
    if state.console.admin_token.is_none() {
        return "<h1>Log in</h1><p>No admin token is configured (<code>KYC__HTTP__ADMIN_TOKEN</code>): the console is read-only.</p>".to_owned();
    }
    format!(
        "<h1>Log in</h1>{}<form method=\"post\" action=\"/console/login\" class=\"login\"><label>Your name <input name=\"operator\" id=\"operator\" required maxlength=\"64\" pattern=\"[A-Za-z0-9._@\\-]+\" autocomplete=\"username\"></label><label>Admin token <input type=\"password\" name=\"token\" id=\"token\" required autocomplete=\"current-password\"></label><button type=\"submit\" id=\"login\">Log in</button></form><p class=\"hint\">Your name is recorded with every action as <code>operator:&lt;name&gt;</code>.</p>",
        error
            .map(|e| format!("<p class=\"error\">{}</p>", esc(e)))
            .unwrap_or_default()
    )
}
