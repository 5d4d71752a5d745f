//! One error type for every Didit call, classified by what the caller should do about it.
//!
//! The classes drive the whole fleet: a retryable error re-schedules the job without burning
//! an attempt, an account-level error pauses Didit calls fleet-wide (it is not the job's
//! fault), and a request-level error fails that request at once.

use std::{fmt, time::Duration};

use serde_json::Value;

use super::Endpoint;

/// Why Didit calls are paused for a whole account: the fault is the account's, not one
/// request's, so retrying the request alone cannot help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountPause {
    /// 401: the key is wrong, revoked or expired.
    InvalidKey,
    /// 403 where the key must have access.
    Forbidden,
    /// Not enough credits.
    NoCredits,
}

impl AccountPause {
    /// Every cause, e.g. to pre-register metric label values.
    pub const ALL: [AccountPause; 3] = [
        AccountPause::InvalidKey,
        AccountPause::Forbidden,
        AccountPause::NoCredits,
    ];

    /// A stable snake_case name (`invalid_key`, `forbidden`, `no_credits`), fit for a
    /// metric label or a stored pause record; [`AccountPause::parse`] reads it back.
    pub fn as_str(self) -> &'static str {
        match self {
            AccountPause::InvalidKey => "invalid_key",
            AccountPause::Forbidden => "forbidden",
            AccountPause::NoCredits => "no_credits",
        }
    }

    /// Reads a name written by [`AccountPause::as_str`]; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// What the caller should do about a failed call: the answer of [`DiditError::class`].
///
/// There are four courses of action: retry with backoff (`Retryable` without a
/// `retry_after`), retry no sooner than Didit asked (`Retryable` with one), stop calling
/// Didit for the whole account (`Account`), or give up on this request (`Request`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorClass {
    /// Try again later; `retry_after` is Didit's own floor when it sent one.
    Retryable {
        /// The `Retry-After` of a 429 or 5xx answer (capped at [`MAX_RETRY_AFTER`]): wait
        /// at least this long. `None` when Didit sent none or no answer came at all; back
        /// off on your own schedule.
        retry_after: Option<Duration>,
    },
    /// The account cannot make calls: pause every call on it until a probe (a cheap read
    /// such as [`DiditClient::balance`](crate::DiditClient::balance)) proves the cause gone.
    Account(AccountPause),
    /// This request cannot succeed as sent.
    Request,
}

/// A failed Didit call: which call, and what went wrong.
///
/// Its message never quotes personal data: error bodies are Didit's own messages, and a
/// response that could not be decoded is described without the values it held.
///
/// ```
/// use didit::{DiditError, DiditErrorKind, Endpoint, ErrorClass};
///
/// let error = DiditError::new(Endpoint::Decision, DiditErrorKind::Timeout);
/// match error.class() {
///     ErrorClass::Retryable { retry_after } => {
///         // Wait at least `retry_after` when Didit gave one, else back off.
///         assert_eq!(retry_after, None);
///     }
///     ErrorClass::Account(cause) => panic!("pause every call: {}", cause.as_str()),
///     ErrorClass::Request => panic!("give up on this request: {error}"),
/// }
/// assert!(error.is_retryable());
/// assert_eq!(error.to_string(), "Didit decision: timed out");
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[error("Didit {endpoint}: {kind}")]
pub struct DiditError {
    /// The call that failed.
    pub endpoint: Endpoint,
    /// What went wrong.
    pub kind: DiditErrorKind,
}

/// What went wrong with a Didit call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiditErrorKind {
    /// No complete answer within the call's timeout; Didit may or may not have acted on it.
    #[error("timed out")]
    Timeout,
    /// The connection could not be opened (DNS, refused, TLS); Didit did not see the call.
    /// Holds the innermost cause.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The exchange broke after the connection opened (reset, truncated body), or the HTTP
    /// client could not be built. Holds the innermost cause.
    #[error("transport error: {0}")]
    Transport(String),
    /// Didit answered with a status other than 2xx.
    #[error("HTTP {status}: {body}")]
    Status {
        /// The HTTP status code (Didit uses 400, 401, 403, 404, 415, 429, 5xx).
        status: u16,
        /// Didit's error body, parsed from Django REST Framework's shapes.
        body: Box<ErrorBody>,
        /// `Retry-After` of a 429 or 5xx answer, as a duration from receipt.
        retry_after: Option<Duration>,
    },
    /// A 2xx whose body is not what the API promises (a hostile or broken response).
    #[error("unexpected response body: {0}")]
    Decode(String),
}

impl DiditError {
    /// An error of `kind` on a call to `endpoint`; the client builds these, and tests or
    /// wrappers may too.
    pub fn new(endpoint: Endpoint, kind: DiditErrorKind) -> Self {
        Self { endpoint, kind }
    }

    /// What the caller should do about this failure.
    ///
    /// - Retryable: a timeout, a connection or transport failure, a 2xx with a body that is
    ///   not what Didit promises (more likely a proxy than a lasting answer), a 429, or a 5xx;
    ///   with Didit's `Retry-After` when it sent one.
    /// - Account: a 401 (the key is wrong, revoked or expired), a 403 on a call any valid
    ///   key may make (the key lost access), or a 400 saying there are not enough credits.
    ///   Retrying this request cannot help; no other call will succeed either.
    /// - Request: anything else (400 validation, 404 unknown session, 403 on a PDF of an
    ///   unfinished session): this request cannot succeed as sent.
    pub fn class(&self) -> ErrorClass {
        match &self.kind {
            DiditErrorKind::Timeout | DiditErrorKind::Connect(_) | DiditErrorKind::Transport(_) => {
                ErrorClass::Retryable { retry_after: None }
            }
            // A broken body is more likely a proxy or an outage than a permanent answer.
            DiditErrorKind::Decode(_) => ErrorClass::Retryable { retry_after: None },
            DiditErrorKind::Status {
                status,
                body,
                retry_after,
            } => match *status {
                429 | 500..=599 => ErrorClass::Retryable {
                    retry_after: *retry_after,
                },
                401 => ErrorClass::Account(AccountPause::InvalidKey),
                403 if self.endpoint.forbidden_means_account() => {
                    ErrorClass::Account(AccountPause::Forbidden)
                }
                400 if body.mentions("enough credits") => {
                    ErrorClass::Account(AccountPause::NoCredits)
                }
                _ => ErrorClass::Request,
            },
        }
    }

    /// Whether [`DiditError::class`] is [`ErrorClass::Retryable`].
    pub fn is_retryable(&self) -> bool {
        matches!(self.class(), ErrorClass::Retryable { .. })
    }

    /// This request cannot succeed as sent: retrying it, or waiting, will not help.
    pub fn is_request_error(&self) -> bool {
        self.class() == ErrorClass::Request
    }

    /// Why the whole account cannot make calls, when that is the cause.
    pub fn account_pause(&self) -> Option<AccountPause> {
        match self.class() {
            ErrorClass::Account(pause) => Some(pause),
            _ => None,
        }
    }

    /// Didit refused because the account has run out of credits (a `400` that says so).
    pub fn is_no_credits(&self) -> bool {
        self.account_pause() == Some(AccountPause::NoCredits)
    }

    /// Didit throttled the call (`429`): its scopes should wait, not only this request.
    pub fn is_rate_limited(&self) -> bool {
        self.status() == Some(429)
    }

    /// Didit certainly did not act on the call: it never reached Didit (the connection
    /// could not be opened) or Didit refused it unprocessed (`429`). A create that failed
    /// so can be sent again without first looking for the session it might have made.
    pub fn was_not_processed(&self) -> bool {
        self.is_rate_limited() || matches!(self.kind, DiditErrorKind::Connect(_))
    }

    /// How long Didit asked to wait (`Retry-After`), when it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match &self.kind {
            DiditErrorKind::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The resource does not exist at Didit (`404`): deleted, or never this account's.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// Didit refused to create a session for a person on its blocklist (a `400` saying the
    /// user "has been blocked").
    pub fn is_blocklisted(&self) -> bool {
        self.refusal_mentions("blocked")
    }

    /// `update-status` refused because the session already has that status: the change
    /// asked for is in place.
    pub fn is_status_unchanged(&self) -> bool {
        self.refusal_mentions("same as the current status")
    }

    /// A 2xx answer whose body is not what the API promises: not Didit's answer to the
    /// request, more likely a proxy or an outage in between.
    pub fn is_malformed_response(&self) -> bool {
        matches!(self.kind, DiditErrorKind::Decode(_))
    }

    /// The HTTP status, when Didit answered.
    pub fn status(&self) -> Option<u16> {
        match &self.kind {
            DiditErrorKind::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A 4xx whose body says `words` (case-insensitive).
    fn refusal_mentions(&self, words: &str) -> bool {
        match &self.kind {
            DiditErrorKind::Status { status, body, .. } => {
                (400..500).contains(status) && body.mentions(words)
            }
            _ => false,
        }
    }
}

/// Didit's error body: Django REST Framework's shapes, flattened for people and code.
///
/// DRF answers `{"detail": "…"}`, `{"field": ["…", …]}`, `{"field": "…"}`, nested lists for
/// array fields, or a bare list `["…"]`. Anything else (HTML for a malformed path, empty) is
/// kept as a short excerpt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorBody {
    /// The `detail` message of a non-field error (`"Not found."`, a rate-limit message).
    pub detail: Option<String>,
    /// `(field, messages)` in the order Didit sent them.
    pub fields: Vec<(String, Vec<String>)>,
    /// Messages of a bare-array body.
    pub messages: Vec<String>,
    /// The start of a body that is not JSON.
    pub excerpt: Option<String>,
}

impl ErrorBody {
    /// Parses any error body; never fails (an unreadable body becomes an `excerpt`).
    ///
    /// ```
    /// let body = didit::ErrorBody::parse(br#"{"workflow_id": ["This field is required."]}"#);
    /// assert_eq!(body.to_string(), "workflow_id: This field is required.");
    /// ```
    pub fn parse(bytes: &[u8]) -> ErrorBody {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(map)) => {
                let mut body = ErrorBody::default();
                for (key, value) in map {
                    if key == "detail" {
                        body.detail = Some(flatten_messages(&value).join(" "));
                    } else {
                        body.fields.push((key, flatten_messages(&value)));
                    }
                }
                body
            }
            Ok(value @ Value::Array(_)) => ErrorBody {
                messages: flatten_messages(&value),
                ..ErrorBody::default()
            },
            Ok(other) => ErrorBody {
                messages: vec![other.to_string()],
                ..ErrorBody::default()
            },
            Err(_) => {
                let text = String::from_utf8_lossy(bytes);
                let text = text.trim();
                ErrorBody {
                    excerpt: (!text.is_empty()).then(|| text.chars().take(120).collect()),
                    ..ErrorBody::default()
                }
            }
        }
    }

    /// Whether any message of the body contains `words` (lower case), ignoring case.
    fn mentions(&self, words: &str) -> bool {
        let all = self
            .detail
            .iter()
            .chain(self.messages.iter())
            .chain(self.fields.iter().flat_map(|(_, m)| m.iter()));
        all.into_iter()
            .any(|m| m.to_ascii_lowercase().contains(words))
    }
}

/// Collects every string in a DRF error value, prefixing nested field names.
fn flatten_messages(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().flat_map(flatten_messages).collect(),
        Value::Object(map) => map
            .iter()
            .flat_map(|(k, v)| {
                flatten_messages(v)
                    .into_iter()
                    .map(move |m| format!("{k}: {m}"))
            })
            .collect(),
        Value::Null => Vec::new(),
        other => vec![other.to_string()],
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        parts.extend(self.detail.iter().cloned());
        parts.extend(
            self.fields
                .iter()
                .map(|(field, messages)| format!("{field}: {}", messages.join(" "))),
        );
        parts.extend(self.messages.iter().cloned());
        parts.extend(self.excerpt.iter().map(|e| format!("(not JSON) {e}")));
        if parts.is_empty() {
            f.write_str("(empty body)")
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}

/// The longest `Retry-After` honoured; a larger value (a broken proxy) is capped to it.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Reads `Retry-After` as seconds or as an HTTP date relative to `now`, capped at
/// [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let when = httpdate::parse_http_date(value).ok()?;
            when.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_error(endpoint: Endpoint, status: u16, body: &str) -> DiditError {
        DiditError::new(
            endpoint,
            DiditErrorKind::Status {
                status,
                body: Box::new(ErrorBody::parse(body.as_bytes())),
                retry_after: None,
            },
        )
    }

    #[test]
    fn drf_bodies_of_every_shape_are_readable() {
        let b = ErrorBody::parse(br#"{"detail": "Not found."}"#);
        assert_eq!(b.to_string(), "Not found.");
        let b = ErrorBody::parse(br#"{"workflow_id": ["This field is required."]}"#);
        assert_eq!(b.to_string(), "workflow_id: This field is required.");
        let b = ErrorBody::parse(br#"{"workflow_id": "Invalid workflow_id."}"#);
        assert_eq!(
            b.fields,
            vec![(
                "workflow_id".to_owned(),
                vec!["Invalid workflow_id.".to_owned()]
            )]
        );
        let b = ErrorBody::parse(br#"["The new status is the same as the current status."]"#);
        assert_eq!(b.messages.len(), 1);
        let b = ErrorBody::parse(
            br#"{"nodes_to_resubmit": [{"feature": ["\"BOGUS\" is not a valid choice."]}]}"#,
        );
        assert_eq!(
            b.to_string(),
            "nodes_to_resubmit: feature: \"BOGUS\" is not a valid choice."
        );
        let b = ErrorBody::parse(b"<html><body>Not Found</body></html>");
        assert!(b.to_string().starts_with("(not JSON) <html>"));
        assert_eq!(ErrorBody::parse(b"").to_string(), "(empty body)");
    }

    #[test]
    fn each_failure_is_classified() {
        use AccountPause::*;
        let cases = [
            (
                status_error(Endpoint::Decision, 503, "{}"),
                ErrorClass::Retryable { retry_after: None },
            ),
            (
                status_error(Endpoint::Decision, 429, r#"{"detail":"slow down"}"#),
                ErrorClass::Retryable { retry_after: None },
            ),
            (
                status_error(Endpoint::GeneratePdf, 401, r#"{"detail":"bad key"}"#),
                ErrorClass::Account(InvalidKey),
            ),
            (
                status_error(Endpoint::CreateSession, 403, r#"{"detail":"no"}"#),
                ErrorClass::Account(Forbidden),
            ),
            (
                status_error(Endpoint::Decision, 403, r#"{"detail":"no"}"#),
                ErrorClass::Account(Forbidden),
            ),
            (
                status_error(
                    Endpoint::GeneratePdf,
                    403,
                    r#"{"detail":"You can only generate a PDF for sessions in review"}"#,
                ),
                ErrorClass::Request,
            ),
            (
                status_error(
                    Endpoint::CreateSession,
                    400,
                    r#"{"detail":"You don't have enough credits to perform this request."}"#,
                ),
                ErrorClass::Account(NoCredits),
            ),
            (
                status_error(
                    Endpoint::CreateSession,
                    400,
                    r#"{"workflow_id":"Invalid workflow_id."}"#,
                ),
                ErrorClass::Request,
            ),
            (
                status_error(Endpoint::Decision, 404, r#"{"detail":"Not found."}"#),
                ErrorClass::Request,
            ),
            (
                DiditError::new(Endpoint::Decision, DiditErrorKind::Timeout),
                ErrorClass::Retryable { retry_after: None },
            ),
            (
                DiditError::new(
                    Endpoint::Decision,
                    DiditErrorKind::Connect("refused".into()),
                ),
                ErrorClass::Retryable { retry_after: None },
            ),
        ];
        for (error, class) in cases {
            assert_eq!(error.class(), class, "{error}");
        }
    }

    #[test]
    fn refusals_say_what_they_mean() {
        let blocked = status_error(
            Endpoint::CreateSession,
            400,
            r#"{"vendor_data": "This user or business has been blocked and cannot create new verification sessions."}"#,
        );
        assert!(blocked.is_blocklisted() && blocked.is_request_error());
        assert!(!blocked.is_no_credits() && !blocked.is_status_unchanged());
        assert_eq!(blocked.account_pause(), None);

        let invalid = status_error(
            Endpoint::CreateSession,
            400,
            r#"{"workflow_id":"Invalid workflow_id."}"#,
        );
        assert!(invalid.is_request_error() && !invalid.is_blocklisted());

        let broke = status_error(
            Endpoint::CreateSession,
            400,
            r#"{"detail":"You don't have enough credits to perform this request."}"#,
        );
        assert!(broke.is_no_credits() && !broke.is_request_error());
        assert_eq!(broke.account_pause(), Some(AccountPause::NoCredits));

        let revoked = status_error(Endpoint::Decision, 401, r#"{"detail":"bad key"}"#);
        assert_eq!(revoked.account_pause(), Some(AccountPause::InvalidKey));
        assert!(!revoked.is_no_credits());

        let same = status_error(
            Endpoint::UpdateStatus,
            400,
            r#"["The new status is the same as the current status."]"#,
        );
        assert!(same.is_status_unchanged() && !same.is_blocklisted());

        let gone = status_error(Endpoint::DeleteSession, 404, r#"{"detail":"Not found."}"#);
        assert!(gone.is_not_found() && gone.is_request_error() && !gone.is_rate_limited());

        // Words in a 5xx page are an outage talking, not a refusal.
        let outage = status_error(Endpoint::CreateSession, 503, "upstream blocked");
        assert!(!outage.is_blocklisted() && outage.is_retryable());
    }

    #[test]
    fn throttling_and_broken_bodies_are_recognised() {
        let throttled = DiditError::new(
            Endpoint::Decision,
            DiditErrorKind::Status {
                status: 429,
                body: Box::default(),
                retry_after: Some(Duration::from_secs(7)),
            },
        );
        assert!(throttled.is_rate_limited() && throttled.was_not_processed());
        assert_eq!(throttled.retry_after(), Some(Duration::from_secs(7)));
        let refused = DiditError::new(
            Endpoint::CreateSession,
            DiditErrorKind::Connect("connection refused".into()),
        );
        assert!(refused.was_not_processed() && !refused.is_rate_limited());
        let outage = status_error(Endpoint::CreateSession, 503, "{}");
        assert!(!outage.was_not_processed(), "a 5xx may have been processed");
        assert_eq!(
            status_error(Endpoint::Decision, 503, "{}").retry_after(),
            None
        );
        let garbled = DiditError::new(Endpoint::Decision, DiditErrorKind::Decode("eof".into()));
        assert!(garbled.is_malformed_response() && !garbled.is_rate_limited());
        let timeout = DiditError::new(Endpoint::Decision, DiditErrorKind::Timeout);
        assert!(!timeout.is_malformed_response() && timeout.retry_after().is_none());
        assert!(
            !timeout.was_not_processed(),
            "a timed-out call may have been processed"
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        assert_eq!(parse_retry_after("17", now), Some(Duration::from_secs(17)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(42));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(42)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(5));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(
            parse_retry_after("18446744073709551615", now),
            Some(MAX_RETRY_AFTER)
        );
    }
}
