//! The operator console: a web page for queues, sessions, reviews and the dead set.
//!
//! Grafana shows trends; operators also need to see items and act on them: which
//! verifications wait, which a rule held for review, why a job failed. The console is
//! server-rendered HTML from compile-time `maud` templates (which escape every value they
//! are given) with a little plain JS, its assets compiled into the binary, served under
//! `/console/` on the internal port. Every list pages, and can re-read itself every few
//! seconds (a switch on the page; `console.js`).
//!
//! **Access.** Without the admin token (`http.admin_token`) it is read-only and masks PII
//! (vendor_data, payload values). The token is presented as `Authorization: Bearer` or by the
//! login form, which sets an HttpOnly `SameSite=Strict` cookie holding a hash of it (never
//! the token itself). Actions are POST only, need the token, and a cookie-authenticated POST
//! must come from the console's own origin (`Origin` / `Sec-Fetch-Site`; scheme, host and
//! port): that and the SameSite cookie are the CSRF protection. Failed logins are throttled
//! per client address (`http.trusted_proxies` says whose `X-Forwarded-For` is believed),
//! answered 429 with `Retry-After` past the limit, counted in
//! `kyc_console_login_failures_total{reason}` and kept out of the operators' action log, so
//! a flood of wrong tokens can neither guess the token nor push real actions out of the log.
//!
//! **Actions** only read, verify and enqueue, like every HTTP handler: approve / decline /
//! resubmit enqueue an [`OperatorAction`](crate::jobs::OperatorAction) job, and the review
//! queue shows it pending until that job has run; replay, delete and purge act on the dead
//! set. Each is audited (the request's trail when it names one, and the
//! shared console log) and counted in `kyc_console_actions_total{action}`.

mod actions;
mod html;
mod pages;

use std::time::Duration;

use axum::{
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::state::{AppState, ConsoleState};

/// Name of the cookie that carries the hash of the admin token.
const TOKEN_COOKIE: &str = "kyc_console";
/// Name of the cookie that remembers the operator's name after login.
const OPERATOR_COOKIE: &str = "kyc_operator";

/// The console's routes (empty when `http.console` is off).
pub fn router(state: AppState) -> Router {
    if !state.console.enabled {
        return Router::new();
    }
    Router::new()
        .route("/console", get(pages::to_overview))
        .route("/console/", get(pages::overview))
        .route("/console/sessions", get(pages::sessions))
        .route("/console/reviews", get(pages::reviews))
        .route("/console/reviews/{session_id}", post(actions::review))
        .route("/console/dead", get(pages::dead))
        .route("/console/dead/{queue}/replay", post(actions::replay))
        .route(
            "/console/dead/{queue}/replay-all",
            post(actions::replay_all),
        )
        .route("/console/dead/{queue}/purge", post(actions::purge))
        .route("/console/dead/{queue}/delete", post(actions::delete))
        .route("/console/login", get(pages::login).post(actions::login))
        .route("/console/logout", post(actions::logout))
        .route("/console/assets/console.css", get(css))
        .route("/console/assets/console.js", get(js))
        .with_state(state)
}

async fn css() -> impl IntoResponse {
    asset(
        "text/css; charset=utf-8",
        include_str!("assets/console.css"),
    )
}

async fn js() -> impl IntoResponse {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/console.js"),
    )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// Who is looking at the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// Presented the admin token: may act and see PII.
    pub admin: bool,
    /// The token came in the login cookie (so a POST needs the same-origin check).
    pub via_cookie: bool,
    /// The operator's name from `X-Operator` or the login cookie, when valid.
    pub operator: Option<String>,
}

impl Access {
    /// Reads the token and operator from a request's headers.
    pub fn of(console: &ConsoleState, headers: &HeaderMap) -> Access {
        let Some(token) = &console.admin_token else {
            return Access {
                admin: false,
                via_cookie: false,
                operator: None,
            };
        };
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let by_bearer = bearer
            .is_some_and(|b| bool::from(b.as_bytes().ct_eq(token.expose_secret().as_bytes())));
        let by_cookie = !by_bearer
            && cookie(headers, TOKEN_COOKIE).is_some_and(|c| {
                bool::from(c.as_bytes().ct_eq(token_cookie_value(token).as_bytes()))
            });
        // A request that names an operator is taken at its word: an invalid `X-Operator`
        // leaves it nameless rather than falling back to the login cookie's name.
        let operator = match headers.get("x-operator") {
            Some(v) => v.to_str().ok().map(str::to_owned),
            None => cookie(headers, OPERATOR_COOKIE).map(str::to_owned),
        }
        .filter(|o| valid_operator(o));
        Access {
            admin: by_bearer || by_cookie,
            via_cookie: by_cookie,
            operator,
        }
    }
}

/// The login cookie's value: a hash of the token, so the cookie never carries the token.
fn token_cookie_value(token: &SecretString) -> String {
    let mut h = Sha256::new();
    h.update(b"kyc-worker console session\x1f");
    h.update(token.expose_secret().as_bytes());
    hex::encode(h.finalize())
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// An operator name: 1–64 characters of `[A-Za-z0-9._@-]` (it becomes
/// `decided_by = operator:<name>` in events).
pub fn valid_operator(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c))
}

/// The CSRF check of a POST: a browser's cross-site request is refused, and a request
/// authenticated by the cookie must show it comes from this origin.
fn same_origin(headers: &HeaderMap, access: &Access) -> Result<(), ConsoleError> {
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if fetch_site.is_some_and(|s| s != "same-origin" && s != "none") {
        return Err(ConsoleError::Forbidden("cross-site request refused"));
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    if let Some(origin) = origin {
        let origin = url::Url::parse(origin).ok();
        let origin_host = origin.as_ref().and_then(|u| {
            u.host_str().map(|h| match u.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_owned(),
            })
        });
        // This server speaks plain HTTP; behind a TLS-terminating proxy the proxy says so.
        // (A browser cannot set X-Forwarded-Proto on a cross-site request.)
        let scheme = headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(|v| v.trim().to_ascii_lowercase())
            .unwrap_or_else(|| "http".to_owned());
        let same_scheme = origin.as_ref().is_some_and(|u| u.scheme() == scheme);
        if origin_host.is_none() || origin_host.as_deref() != host || !same_scheme {
            return Err(ConsoleError::Forbidden("cross-origin request refused"));
        }
    } else if access.via_cookie && fetch_site.is_none() {
        return Err(ConsoleError::Forbidden(
            "a request without Origin or Sec-Fetch-Site needs the bearer token",
        ));
    }
    Ok(())
}

/// Why a console request failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("this needs the admin token (log in first)")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// Too many failed logins from this address: wait this long.
    #[error("too many failed logins from this address; try again in {} s", .0.as_secs().max(1))]
    Throttled(Duration),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let status = match &self {
            ConsoleError::Unauthorized => StatusCode::UNAUTHORIZED,
            ConsoleError::Forbidden(_) => StatusCode::FORBIDDEN,
            ConsoleError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ConsoleError::NotFound(_) => StatusCode::NOT_FOUND,
            ConsoleError::Conflict(_) => StatusCode::CONFLICT,
            ConsoleError::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
            ConsoleError::Redis(_) | ConsoleError::Store(_) | ConsoleError::Queue(_) => {
                tracing::error!(error = %self, "console request failed");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        let message = match &self {
            ConsoleError::Redis(_) | ConsoleError::Store(_) | ConsoleError::Queue(_) => {
                "Redis is unreachable; try again.".to_owned()
            }
            other => other.to_string(),
        };
        let body = html::page(
            "Error",
            None,
            maud::html! {
                h1 { (status.as_u16()) }
                p.error { (message) }
                p { a href="/console/" { "Back to the overview" } }
            },
        );
        let mut response = (status, html_headers(), body.into_string()).into_response();
        if let ConsoleError::Throttled(wait) = &self {
            if let Ok(value) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

/// Headers of every console page: HTML, never cached, never framed, scripts only from here.
fn html_headers() -> [(header::HeaderName, HeaderValue); 4] {
    [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'",
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_names_are_short_and_plain() {
        assert!(valid_operator("alice"));
        assert!(valid_operator("a.b-c_d@example.com"));
        assert!(!valid_operator(""));
        assert!(!valid_operator("alice smith"));
        assert!(!valid_operator("<script>"));
        assert!(!valid_operator(&"a".repeat(65)));
    }

    #[test]
    fn a_cross_site_post_is_refused_and_a_same_origin_one_passes() {
        let cookie_access = Access {
            admin: true,
            via_cookie: true,
            operator: None,
        };
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:9090"));
        assert!(same_origin(&headers, &cookie_access).is_err());
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:9090"),
        );
        assert!(same_origin(&headers, &cookie_access).is_ok());
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(same_origin(&headers, &cookie_access).is_err());
        // Same host and port, another scheme: another origin.
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://127.0.0.1:9090"),
        );
        assert!(same_origin(&headers, &cookie_access).is_err());
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert!(same_origin(&headers, &cookie_access).is_ok());
        let mut cross = HeaderMap::new();
        cross.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        let bearer = Access {
            via_cookie: false,
            ..cookie_access
        };
        assert!(same_origin(&cross, &bearer).is_err());
        assert!(same_origin(&HeaderMap::new(), &bearer).is_ok());
    }
}
