//! The console's actions: verify the token and the origin, enqueue or act on the dead set,
//! audit, count, and redirect back to the page (POST/redirect/GET).

use std::{net::SocketAddr, time::Duration};

use axum::{
    extract::{ConnectInfo, Path, State},
    http::{header, Extensions, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Redirect, Response},
    Form,
};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::{
    html, html_headers, pages::login_form, same_origin, token_cookie_value, valid_operator, Access,
    ConsoleError, OPERATOR_COOKIE, TOKEN_COOKIE,
};
use crate::{
    jobs::{OperatorAction, OperatorDecision, QUEUES},
    state::AppState,
};

/// What an action's refusal says when it names no valid operator.
const NAME_THE_OPERATOR: &str = "name the operator: X-Operator (or the login form's name), \
     1-64 characters of letters, digits, '.', '_', '@', '-'";

/// Checks that the caller may act and says who does: the admin token, a same-origin
/// request, and an operator name (`named` — a form's field — else `X-Operator` or the login
/// cookie). Every action is recorded under that name, so an action without one is refused
/// rather than audited as nobody's.
fn admin(
    state: &AppState,
    headers: &HeaderMap,
    named: Option<&str>,
) -> Result<String, ConsoleError> {
    let access = Access::of(&state.console, headers);
    if !access.admin {
        return Err(ConsoleError::Unauthorized);
    }
    same_origin(headers, &access)?;
    let operator = match named.map(str::trim).filter(|n| !n.is_empty()) {
        Some(name) => Some(name.to_owned()),
        None => access.operator.clone(),
    };
    match operator {
        Some(name) if valid_operator(&name) => Ok(name),
        _ => Err(ConsoleError::BadRequest(NAME_THE_OPERATOR.into())),
    }
}

fn back(path: &str, notice: &str) -> Redirect {
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("notice", notice)
        .finish();
    Redirect::to(&format!("{path}?{query}"))
}

fn dead_queue(queue: &str) -> Result<&'static str, ConsoleError> {
    QUEUES
        .iter()
        .copied()
        .find(|q| *q == queue)
        .ok_or_else(|| ConsoleError::NotFound("no such queue".into()))
}

/// Records an action in the shared console log and counts it.
async fn record(
    state: &AppState,
    action: &str,
    operator: &str,
    target: &str,
) -> Result<(), ConsoleError> {
    state
        .store
        .console_log(json!({"action": action, "operator": operator, "target": target}))
        .await?;
    state
        .metrics
        .console_actions
        .with_label_values(&[action])
        .inc();
    tracing::info!(action, operator, target, "console action");
    Ok(())
}

#[derive(Debug, Deserialize)]
pub struct ReviewForm {
    action: String,
    #[serde(default)]
    operator: Option<String>,
    #[serde(default)]
    note: Option<String>,
}

/// Approve / decline / resubmit a session held In Review: enqueues an [`OperatorAction`].
pub async fn review(
    State(state): State<AppState>,
    Path(session_id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<ReviewForm>,
) -> Result<Redirect, ConsoleError> {
    let operator = admin(&state, &headers, form.operator.as_deref())?;
    let sid: Uuid = session_id
        .parse()
        .map_err(|_| ConsoleError::BadRequest("not a session id".into()))?;
    let action = OperatorDecision::parse(&form.action).ok_or_else(|| {
        ConsoleError::BadRequest("action must be approve, decline or resubmit".into())
    })?;
    let note = form
        .note
        .map(|n| n.trim().chars().take(200).collect::<String>())
        .filter(|n| !n.is_empty());
    let Some(held) = state.store.review(sid).await? else {
        return Err(ConsoleError::Conflict(
            "this session is not held for review (any more)".into(),
        ));
    };
    // Marked before the job is queued: a job that runs at once then clears the mark with
    // the session's review entry, instead of leaving a mark behind it.
    let job = Uuid::new_v4().to_string();
    state
        .store
        .mark_review_pending(
            sid,
            &json!({"action": action.as_str(), "operator": operator, "job_id": job, "at_ms": crate::queue::now_ms()}),
        )
        .await?;
    state
        .queue
        .push_with_id(
            &job,
            &OperatorAction {
                session_id: sid,
                action,
                operator: operator.clone(),
                note,
            },
        )
        .await?;
    state
        .store
        .audit(
            &held.requests,
            "console_action",
            json!({"action": action.as_str(), "operator": operator, "session_id": sid, "job_id": job}),
        )
        .await?;
    record(&state, action.as_str(), &operator, &sid.to_string()).await?;
    Ok(back(
        "/console/reviews",
        &format!(
            "{} of session {sid} queued: pending until its job has run",
            action.as_str()
        ),
    ))
}

#[derive(Debug, Deserialize)]
pub struct ReplayForm {
    entry_id: String,
}

/// Puts one dead job back on its queue.
pub async fn replay(
    State(state): State<AppState>,
    Path(queue): Path<String>,
    headers: HeaderMap,
    Form(form): Form<ReplayForm>,
) -> Result<Redirect, ConsoleError> {
    on_one_dead_job(&state, &queue, &headers, &form, DeadAction::Replay).await
}

/// A dead entry id from a form (`<ms>-<seq>`), or a 400.
fn dead_entry(raw: &str) -> Result<&str, ConsoleError> {
    let entry = raw.trim();
    let valid = !entry.is_empty()
        && entry.len() <= 40
        && entry.chars().all(|c| c.is_ascii_digit() || c == '-');
    if valid {
        Ok(entry)
    } else {
        Err(ConsoleError::BadRequest("not a dead entry id".into()))
    }
}

/// Deletes one dead job for good (the job's outcome event, if any, was published when it
/// died).
pub async fn delete(
    State(state): State<AppState>,
    Path(queue): Path<String>,
    headers: HeaderMap,
    Form(form): Form<ReplayForm>,
) -> Result<Redirect, ConsoleError> {
    on_one_dead_job(&state, &queue, &headers, &form, DeadAction::Delete).await
}

/// What an operator does to one dead job.
#[derive(Debug, Clone, Copy)]
enum DeadAction {
    Replay,
    Delete,
}

/// Checks the operator and the form, acts on one dead job, logs it and goes back to the
/// dead set; a job replayed or deleted meanwhile is a 404.
async fn on_one_dead_job(
    state: &AppState,
    queue: &str,
    headers: &HeaderMap,
    form: &ReplayForm,
    action: DeadAction,
) -> Result<Redirect, ConsoleError> {
    let operator = admin(state, headers, None)?;
    let queue = dead_queue(queue)?;
    let entry = dead_entry(&form.entry_id)?;
    let done = match action {
        DeadAction::Replay => state.queue.dead_replay(queue, entry).await?,
        DeadAction::Delete => state.queue.dead_delete(queue, entry).await?,
    };
    if !done {
        return Err(ConsoleError::NotFound(
            "no such dead job (replayed or deleted meanwhile)".into(),
        ));
    }
    let (logged, notice) = match action {
        DeadAction::Replay => ("replay", format!("replayed 1 {queue} job")),
        DeadAction::Delete => ("delete", format!("deleted 1 dead {queue} job")),
    };
    record(state, logged, &operator, &format!("{queue}/{entry}")).await?;
    Ok(back("/console/dead", &notice))
}

/// Replays every job dead in a queue now.
pub async fn replay_all(
    State(state): State<AppState>,
    Path(queue): Path<String>,
    headers: HeaderMap,
) -> Result<Redirect, ConsoleError> {
    let operator = admin(&state, &headers, None)?;
    let queue = dead_queue(&queue)?;
    let n = state.queue.dead_replay_all(queue).await?;
    record(
        &state,
        "replay_all",
        &operator,
        &format!("{queue} ({n} jobs)"),
    )
    .await?;
    Ok(back("/console/dead", &format!("replayed {n} {queue} jobs")))
}

#[derive(Debug, Deserialize)]
pub struct PurgeForm {
    #[serde(default)]
    older_than_s: u64,
}

/// Deletes a queue's dead jobs older than the chosen age (all by default).
pub async fn purge(
    State(state): State<AppState>,
    Path(queue): Path<String>,
    headers: HeaderMap,
    Form(form): Form<PurgeForm>,
) -> Result<Redirect, ConsoleError> {
    let operator = admin(&state, &headers, None)?;
    let queue = dead_queue(&queue)?;
    let n = state
        .queue
        .dead_purge(queue, Duration::from_secs(form.older_than_s))
        .await?;
    record(&state, "purge", &operator, &format!("{queue} ({n} jobs)")).await?;
    Ok(back("/console/dead", &format!("purged {n} {queue} jobs")))
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    token: String,
    operator: String,
}

/// Failed logins one client address may make per [`LOGIN_FAILURE_WINDOW`] before it is
/// answered 429 (a person mistyping gets plenty; a flood is stopped after these).
/// docs/console.md states these numbers.
const LOGIN_FAILURES_ALLOWED: u32 = 10;
/// The window of [`LOGIN_FAILURES_ALLOWED`], from the first failure.
const LOGIN_FAILURE_WINDOW: Duration = Duration::from_secs(300);

/// The client's address: the peer, or the client a trusted proxy names.
fn client_address(state: &AppState, headers: &HeaderMap, extensions: &Extensions) -> String {
    let Some(ConnectInfo(peer)) = extensions.get::<ConnectInfo<SocketAddr>>() else {
        return "unknown".to_owned();
    };
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok());
    state
        .console
        .trusted_proxies
        .client_address(peer.ip(), forwarded)
        .to_string()
}

/// Counts a refused login (never in the operators' action log: anyone can cause one).
fn login_failed(state: &AppState, reason: &'static str) {
    state
        .metrics
        .console_login_failures
        .with_label_values(&[reason])
        .inc();
    tracing::info!(reason, "console login refused");
}

/// Checks the admin token and sets the login cookies (HttpOnly, SameSite=Strict).
pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    extensions: Extensions,
    Form(form): Form<LoginForm>,
) -> Result<Response, ConsoleError> {
    let access = Access::of(&state.console, &headers);
    same_origin(&headers, &access)?;
    let Some(token) = &state.console.admin_token else {
        return Err(ConsoleError::Forbidden(
            "no admin token is configured: the console is read-only",
        ));
    };
    let client = client_address(&state, &headers, &extensions);
    if let Some(wait) = state
        .store
        .login_throttled(&client, LOGIN_FAILURES_ALLOWED)
        .await?
    {
        login_failed(&state, "throttled");
        return Err(ConsoleError::Throttled(wait));
    }
    let operator = form.operator.trim();
    let matches = bool::from(subtle::ConstantTimeEq::ct_eq(
        form.token.trim().as_bytes(),
        secrecy::ExposeSecret::expose_secret(token).as_bytes(),
    ));
    if !matches || !valid_operator(operator) {
        let reason = if matches {
            "Your name: 1-64 characters of letters, digits, '.', '_', '@', '-'."
        } else {
            "Wrong token."
        };
        login_failed(
            &state,
            if matches {
                "bad_operator"
            } else {
                "wrong_token"
            },
        );
        state
            .store
            .count_login_failure(&client, LOGIN_FAILURE_WINDOW)
            .await?;
        let body = html::page("Log in", Some(&access), login_form(&state, Some(reason)));
        return Ok((StatusCode::UNAUTHORIZED, html_headers(), body.into_string()).into_response());
    }
    record(&state, "login", operator, "console").await?;
    let attributes = "Path=/console; HttpOnly; SameSite=Strict";
    let mut response = Redirect::to("/console/").into_response();
    for cookie in [
        format!("{TOKEN_COOKIE}={}; {attributes}", token_cookie_value(token)),
        format!("{OPERATOR_COOKIE}={operator}; {attributes}"),
    ] {
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    Ok(response)
}

/// Clears the login cookies.
pub async fn logout() -> Response {
    let mut response = Redirect::to("/console/").into_response();
    for name in [TOKEN_COOKIE, OPERATOR_COOKIE] {
        if let Ok(value) = HeaderValue::from_str(&format!(
            "{name}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0"
        )) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}
