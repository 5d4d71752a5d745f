//! The HTTP surface: Didit's paths, checks in Didit's order, one handler per endpoint.
//!
//! Routing is done by hand rather than with axum's router because Django's rules are the
//! contract: an unslashed path that would match with a slash answers 301 to it, a session id
//! that is not a lowercase hyphenated UUID does not match any route (HTML 404, not JSON), and
//! an unknown session answers 404 before credentials are checked. Then, in order: injected
//! faults, the API key, the rate-limit scopes of the endpoint, the handler. A handler that
//! takes a session id runs only after `api` found that session under the same lock.

use std::{
    sync::Arc,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    body::Bytes,
    extract::State,
    http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    Json, Router,
};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::{
    contested::WrongKeyStatus,
    control,
    limits::{Call, Injected, LateAnswer, RateLimited, RateScope},
    state::{Inner, Shared},
};

mod handlers;

/// The Didit operations the sandbox serves, plus its own three routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    CreateSession,
    Decision(Uuid),
    ListSessions,
    UpdateStatus(Uuid),
    BlocklistAdd,
    GeneratePdf(Uuid),
    DeleteSession(Uuid),
    CreateWorkflow,
    ListWorkflows,
    GetWorkflow(Uuid),
    UpdateWorkflow(Uuid),
    CreateDestination,
    ListDestinations,
    Balance,
    TopUp,
    Register,
    VerifyEmail,
    Stats,
    Calls,
    Control,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::CreateSession => "session_create",
            Op::Decision(_) => "decision",
            Op::ListSessions => "session_list",
            Op::UpdateStatus(_) => "update_status",
            Op::BlocklistAdd => "blocklist_add",
            Op::GeneratePdf(_) => "generate_pdf",
            Op::DeleteSession(_) => "session_delete",
            Op::CreateWorkflow => "workflow_create",
            Op::ListWorkflows => "workflow_list",
            Op::GetWorkflow(_) => "workflow_get",
            Op::UpdateWorkflow(_) => "workflow_update",
            Op::CreateDestination => "webhook_destination_create",
            Op::ListDestinations => "webhook_destination_list",
            Op::Balance => "balance",
            Op::TopUp => "top_up",
            Op::Register => "register",
            Op::VerifyEmail => "verify_email",
            Op::Stats => "sandbox_stats",
            Op::Calls => "sandbox_calls",
            Op::Control => "sandbox_control",
        }
    }

    fn session_id(self) -> Option<Uuid> {
        match self {
            Op::Decision(id)
            | Op::UpdateStatus(id)
            | Op::GeneratePdf(id)
            | Op::DeleteSession(id) => Some(id),
            _ => None,
        }
    }

    /// The account host needs no key (it is how a key is obtained).
    fn needs_key(self) -> bool {
        !matches!(self, Op::Register | Op::VerifyEmail)
    }

    fn scopes(self) -> &'static [RateScope] {
        match self {
            Op::CreateSession => &[RateScope::Create],
            Op::GeneratePdf(_) => &[RateScope::Get, RateScope::Pdf],
            Op::Decision(_)
            | Op::ListSessions
            | Op::ListWorkflows
            | Op::GetWorkflow(_)
            | Op::ListDestinations
            | Op::Balance => &[RateScope::Get],
            Op::UpdateStatus(_)
            | Op::BlocklistAdd
            | Op::DeleteSession(_)
            | Op::CreateWorkflow
            | Op::UpdateWorkflow(_)
            | Op::CreateDestination
            | Op::TopUp => &[RateScope::Write],
            Op::Register | Op::VerifyEmail | Op::Stats | Op::Calls | Op::Control => &[],
        }
    }
}

/// Path patterns; `{id}` is one path segment.
const ROUTES: [&str; 15] = [
    "/v3/session/",
    "/v3/session/{id}/decision/",
    "/v3/sessions/",
    "/v3/session/{id}/update-status/",
    "/v3/blocklist/add/",
    "/v3/session/{id}/generate-pdf/",
    "/v3/session/{id}/delete/",
    "/v3/workflows/",
    "/v3/workflows/{id}/",
    "/v3/webhook/destinations/",
    "/v3/billing/balance/",
    "/v3/billing/top-up/",
    "/auth/v2/programmatic/register/",
    "/auth/v2/programmatic/verify-email/",
    "/sandbox/",
];

enum Resolved {
    Op(Op),
    Redirect(String),
    NotFound,
    MethodNotAllowed,
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method == Method::GET {
        if let Some(token) = hosted_flow_token(uri.path()) {
            return hosted_flow_page(&shared, token);
        }
    }
    let op = match resolve(&method, uri.path()) {
        Resolved::Op(op) => op,
        Resolved::Redirect(path) => {
            let location = match uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            return (
                StatusCode::MOVED_PERMANENTLY,
                [(header::LOCATION, location)],
            )
                .into_response();
        }
        Resolved::NotFound => return html_not_found(),
        Resolved::MethodNotAllowed => {
            return detail(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("Method \"{method}\" not allowed."),
            )
        }
    };
    match op {
        Op::Stats => return stats(&shared),
        Op::Calls => return json_response(StatusCode::OK, shared.lock().stats.calls_json()),
        Op::Control => {
            return match control::handle(&shared, &body) {
                Ok(action) => json_response(StatusCode::OK, json!({"ok": true, "action": action})),
                Err(message) => detail(StatusCode::BAD_REQUEST, &message),
            }
        }
        _ => {}
    }
    let received_ms = unix_ms();
    let (latency, injected) = {
        let mut inner = shared.lock();
        let roll = rand::random::<f64>();
        (
            inner.faults.latency,
            inner.faults.injected_failure(op.name(), roll),
        )
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let request = Request {
        uri: &uri,
        headers: &headers,
        body: &body,
    };
    let (response, late) = {
        let mut inner = shared.lock();
        let response = match injected {
            Some(failure) => injected_response(failure),
            None => api(&mut inner, op, &request),
        };
        let status = response.status().as_u16();
        inner.stats.record(op.name(), status);
        inner.stats.log(Call {
            endpoint: op.name(),
            status,
            received_ms,
            vendor_data: vendor_data_of(op, &request),
        });
        // Only a create Didit carried out can be answered late: the session is stored.
        let late = (op == Op::CreateSession && response.status().is_success())
            .then(|| inner.faults.late_answer())
            .flatten();
        (response, late)
    };
    match late {
        None => response,
        Some(LateAnswer::After(wait)) => {
            tokio::time::sleep(wait).await;
            response
        }
        Some(LateAnswer::Reset) => broken(response),
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// The `vendor_data` a create carries or a session list filters on, for the call log.
fn vendor_data_of(op: Op, request: &Request<'_>) -> Option<String> {
    match op {
        Op::CreateSession => serde_json::from_slice::<Value>(request.body)
            .ok()?
            .get("vendor_data")?
            .as_str()
            .map(str::to_owned),
        Op::ListSessions => {
            url::form_urlencoded::parse(request.uri.query().unwrap_or_default().as_bytes())
                .find(|(k, _)| k == "vendor_data")
                .map(|(_, v)| v.into_owned())
        }
        _ => None,
    }
}

/// An injected failure as Didit answers it: DRF's throttling message for a 429, the
/// server-error message otherwise, with `Retry-After` when the fault carries one.
fn injected_response(failure: Injected) -> Response {
    let status = StatusCode::from_u16(failure.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = match (status, failure.retry_after_s) {
        (StatusCode::TOO_MANY_REQUESTS, Some(s)) => detail(
            status,
            &format!("Request was throttled. Expected available in {s} seconds."),
        ),
        (StatusCode::TOO_MANY_REQUESTS, None) => detail(status, "Request was throttled."),
        _ => detail(status, "A server error occurred."),
    };
    if let Some(value) = failure
        .retry_after_s
        .and_then(|s| HeaderValue::from_str(&s.to_string()).ok())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// The answer's status line and headers, then a broken connection instead of its body:
/// the client cannot read the session it asked for.
fn broken(response: Response) -> Response {
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = futures_util::stream::once(async {
        Err::<Bytes, _>(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "the sandbox broke the connection after storing the session",
        ))
    });
    Response::from_parts(parts, axum::body::Body::from_stream(body))
}

/// An early answer of a handler (a refusal), boxed because a `Response` is large.
pub type Refusal = Box<Response>;

/// What handlers read from a request.
pub struct Request<'a> {
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub body: &'a Bytes,
}

impl Request<'_> {
    /// The JSON body, or the 400/415 DRF answers for a body it cannot parse.
    pub fn json(&self) -> Result<Value, Refusal> {
        if let Some(ct) = self.headers.get(header::CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or_default();
            if !ct.starts_with("application/json") {
                return Err(Box::new(detail(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    &format!("Unsupported media type \"{ct}\" in request."),
                )));
            }
        }
        if self.body.is_empty() {
            return Ok(Value::Object(Map::new()));
        }
        let value: Value = serde_json::from_slice(self.body)
            .map_err(|e| detail(StatusCode::BAD_REQUEST, &format!("JSON parse error - {e}")))?;
        if value.is_object() {
            Ok(value)
        } else {
            Err(Box::new(json_response(
                StatusCode::BAD_REQUEST,
                json!({"non_field_errors": ["Invalid data. Expected a dictionary, but got list."]}),
            )))
        }
    }

    /// `scheme://host` as the client reached us, for absolute `next`/`previous` links.
    pub fn origin(&self) -> String {
        let host = self
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1");
        format!("http://{host}")
    }
}

fn api(inner: &mut Inner, op: Op, request: &Request<'_>) -> Response {
    if let Some(id) = op.session_id() {
        // Didit looks the session up before it checks credentials.
        if !inner.sessions.contains_key(&id) {
            return not_found();
        }
        inner.advance(id);
    }
    if op.needs_key() {
        match request.headers.get("x-api-key").map(HeaderValue::to_str) {
            None => {
                return detail(
                    StatusCode::FORBIDDEN,
                    "Authentication credentials were not provided or are invalid.",
                )
            }
            Some(Ok(key)) if key == inner.api_key && !inner.key_revoked => {}
            Some(_) => {
                let status = match inner.contested.wrong_key {
                    WrongKeyStatus::Unauthorized => StatusCode::UNAUTHORIZED,
                    WrongKeyStatus::Forbidden => StatusCode::FORBIDDEN,
                };
                return detail(status, "Invalid API Key.");
            }
        }
    }
    if let Err(limited) = inner.limiter.admit(op.scopes(), Instant::now()) {
        return too_many_requests(&limited);
    }
    handlers::call(inner, op, request)
}

fn resolve(method: &Method, path: &str) -> Resolved {
    if path == "/sandbox/stats" || path == "/sandbox/stats/" {
        return if method == Method::GET {
            Resolved::Op(Op::Stats)
        } else {
            Resolved::MethodNotAllowed
        };
    }
    if path == "/sandbox/calls" || path == "/sandbox/calls/" {
        return if method == Method::GET {
            Resolved::Op(Op::Calls)
        } else {
            Resolved::MethodNotAllowed
        };
    }
    if path == "/sandbox/control" || path == "/sandbox/control/" {
        return if method == Method::POST {
            Resolved::Op(Op::Control)
        } else {
            Resolved::MethodNotAllowed
        };
    }
    let Some((pattern, id)) = ROUTES
        .iter()
        .find_map(|p| matches(p, path).map(|id| (*p, id)))
    else {
        let slashed = format!("{path}/");
        if !path.ends_with('/') && ROUTES.iter().any(|p| matches(p, &slashed).is_some()) {
            return Resolved::Redirect(slashed);
        }
        return Resolved::NotFound;
    };
    let id = match id {
        Some(segment) => match canonical_uuid(segment) {
            Some(id) => Some(id),
            None => return Resolved::NotFound,
        },
        None => None,
    };
    let op = match (pattern, method.as_str(), id) {
        ("/v3/session/", "POST", _) => Op::CreateSession,
        ("/v3/session/{id}/decision/", "GET", Some(id)) => Op::Decision(id),
        ("/v3/sessions/", "GET", _) => Op::ListSessions,
        ("/v3/session/{id}/update-status/", "PATCH", Some(id)) => Op::UpdateStatus(id),
        ("/v3/blocklist/add/", "POST", _) => Op::BlocklistAdd,
        ("/v3/session/{id}/generate-pdf/", "GET", Some(id)) => Op::GeneratePdf(id),
        ("/v3/session/{id}/delete/", "DELETE", Some(id)) => Op::DeleteSession(id),
        ("/v3/workflows/", "POST", _) => Op::CreateWorkflow,
        ("/v3/workflows/", "GET", _) => Op::ListWorkflows,
        ("/v3/workflows/{id}/", "GET", Some(id)) => Op::GetWorkflow(id),
        ("/v3/workflows/{id}/", "PATCH", Some(id)) => Op::UpdateWorkflow(id),
        ("/v3/webhook/destinations/", "POST", _) => Op::CreateDestination,
        ("/v3/webhook/destinations/", "GET", _) => Op::ListDestinations,
        ("/v3/billing/balance/", "GET", _) => Op::Balance,
        ("/v3/billing/top-up/", "POST", _) => Op::TopUp,
        ("/auth/v2/programmatic/register/", "POST", _) => Op::Register,
        ("/auth/v2/programmatic/verify-email/", "POST", _) => Op::VerifyEmail,
        ("/sandbox/", _, _) => return Resolved::NotFound,
        _ => return Resolved::MethodNotAllowed,
    };
    Resolved::Op(op)
}

/// Whether `path` fits `pattern`; the `{id}` segment when it has one.
fn matches<'a>(pattern: &str, path: &'a str) -> Option<Option<&'a str>> {
    let mut pattern_parts = pattern.split('/');
    let mut path_parts = path.split('/');
    let mut id = None;
    loop {
        match (pattern_parts.next(), path_parts.next()) {
            (None, None) => return Some(id),
            (Some("{id}"), Some(segment)) if !segment.is_empty() => id = Some(segment),
            (Some(a), Some(b)) if a == b => {}
            _ => return None,
        }
    }
}

/// A session id as Django's URL pattern accepts it: lowercase, hyphenated.
fn canonical_uuid(segment: &str) -> Option<Uuid> {
    let id = Uuid::parse_str(segment).ok()?;
    (id.hyphenated().to_string() == segment).then_some(id)
}

fn stats(shared: &Shared) -> Response {
    let webhooks = shared.webhook_stats.to_json();
    let inner = shared.lock();
    let mut by_status: Map<String, Value> = Map::new();
    for session in inner.sessions.values() {
        let n = by_status
            .entry(session.status.as_str().to_owned())
            .or_insert(json!(0));
        *n = json!(n.as_u64().unwrap_or_default() + 1);
    }
    let mut body = inner.stats.to_json();
    if let Value::Object(map) = &mut body {
        map.insert("sessions_by_status".into(), Value::Object(by_status));
        map.insert("rate_limits".into(), inner.limiter.to_json());
        map.insert("injected_errors".into(), json!(inner.faults.injected));
        map.insert("webhooks".into(), webhooks);
        map.insert("api_key_revoked".into(), json!(inner.key_revoked));
        map.insert("balance".into(), json!(format!("{:.4}", inner.balance)));
    }
    json_response(StatusCode::OK, body)
}

pub fn json_response(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

pub fn detail(status: StatusCode, message: &str) -> Response {
    json_response(status, json!({ "detail": message }))
}

pub fn not_found() -> Response {
    detail(StatusCode::NOT_FOUND, "Not found.")
}

/// The token of a session link, `/session/{token}` or `/{language}/session/{token}`.
fn hosted_flow_token(path: &str) -> Option<&str> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let token = match segments.as_slice() {
        ["session", token] | [_, "session", token] => *token,
        _ => return None,
    };
    (!token.is_empty() && token.chars().all(|c| c.is_ascii_alphanumeric())).then_some(token)
}

/// What a person opening a sandbox session's link sees: no verification to complete, the
/// sandbox plays the session's scenario by itself.
fn hosted_flow_page(shared: &Shared, token: &str) -> Response {
    let inner = shared.lock();
    let Some(session) = inner.session_by_token(token) else {
        return html_not_found();
    };
    let body = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n  <meta charset=\"utf-8\">\n  \
         <title>Didit sandbox session</title>\n</head>\n<body>\n  <h1>Didit sandbox</h1>\n  \
         <p>Session <code id=\"session-id\">{}</code> is <b id=\"status\">{}</b>.</p>\n  \
         <p>This is the local emulator of Didit: there is nothing to complete here. It plays \
         the scenario <code id=\"scenario\">{}</code> by itself.</p>\n</body>\n</html>\n",
        session.id,
        session.status.as_str(),
        session.scenario.as_str(),
    );
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// Django's own page for a URL no pattern matches.
fn html_not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        "<!doctype html>\n<html lang=\"en\">\n<head>\n  <title>Not Found</title>\n</head>\n\
         <body>\n  <h1>Not Found</h1><p>The requested resource was not found on this server.</p>\n\
         </body>\n</html>\n",
    )
        .into_response()
}

fn too_many_requests(limited: &RateLimited) -> Response {
    let mut response = detail(StatusCode::TOO_MANY_REQUESTS, &limited.detail());
    let headers = response.headers_mut();
    for (name, value) in [
        ("retry-after", limited.retry_after_s.to_string()),
        ("x-ratelimit-limit", limited.limit.max.to_string()),
        ("x-ratelimit-remaining", "0".to_owned()),
        ("x-ratelimit-reset", limited.reset_epoch_s.to_string()),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(method: Method, path: &str) -> Option<Op> {
        match resolve(&method, path) {
            Resolved::Op(op) => Some(op),
            _ => None,
        }
    }

    #[test]
    fn paths_resolve_as_django_routes_them() {
        let id = "5f0c9a52-2b8e-4d3c-9a61-7e4b8d2c1f30";
        let uuid = Uuid::parse_str(id).expect("valid");
        assert_eq!(
            op(Method::GET, &format!("/v3/session/{id}/decision/")),
            Some(Op::Decision(uuid))
        );
        assert!(matches!(
            resolve(&Method::GET, "/v3/sessions"),
            Resolved::Redirect(p) if p == "/v3/sessions/"
        ));
        assert!(matches!(
            resolve(&Method::GET, &format!("/v3/session/{id}/generate-pdf")),
            Resolved::Redirect(_)
        ));
        let upper = id.to_uppercase();
        assert!(matches!(
            resolve(&Method::GET, &format!("/v3/session/{upper}/decision/")),
            Resolved::NotFound
        ));
        assert!(matches!(
            resolve(&Method::GET, "/v3/session/not-a-uuid/decision/"),
            Resolved::NotFound
        ));
        assert!(matches!(
            resolve(&Method::DELETE, "/v3/sessions/"),
            Resolved::MethodNotAllowed
        ));
        assert!(matches!(
            resolve(&Method::GET, "/v4/nothing/"),
            Resolved::NotFound
        ));
        assert_eq!(op(Method::GET, "/sandbox/stats"), Some(Op::Stats));
        assert_eq!(op(Method::GET, "/sandbox/calls"), Some(Op::Calls));
        for name in crate::limits::ENDPOINT_NAMES {
            assert!(!name.is_empty());
        }
    }
}
