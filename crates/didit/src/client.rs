//! The Didit HTTP client: one typed method per Didit call.
//!
//! Every call goes through [`DiditClient::send`], which sets the API key, applies the
//! timeout, and turns any failure into a classified [`DiditError`]. Paths keep Didit's
//! trailing slashes: the unslashed forms answer 301, and following that redirect can drop the
//! `x-api-key` header.

use std::{fmt, sync::Arc, time::Duration};

use reqwest::{header::HeaderMap, Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::{de::DeserializeOwned, Serialize};
use url::Url;
use uuid::Uuid;

use super::{
    error::{parse_retry_after, DiditError, DiditErrorKind, ErrorBody},
    types::*,
};

/// Where and how a [`DiditClient`] talks to Didit.
///
/// Its `Debug` prints the API key as `[REDACTED]`, so a configuration can be logged.
///
/// ```
/// use std::time::Duration;
///
/// let mut config = didit::ClientConfig::new(
///     "http://127.0.0.1:8089".parse().expect("url"),
///     "http://127.0.0.1:8089/auth/v2".parse().expect("url"),
///     "sandbox".to_owned().into(),
/// );
/// config.request_timeout = Duration::from_secs(10);
/// assert!(format!("{config:?}").contains("[REDACTED]"));
/// ```
#[derive(Clone)]
pub struct ClientConfig {
    /// The verification host every `/v3/...` path is joined to:
    /// `https://verification.didit.me` for Didit, or a sandbox's address. A path on it is
    /// kept (`http://proxy/didit` calls `http://proxy/didit/v3/...`).
    pub base_url: Url,
    /// The account host of programmatic registration (`https://apx.didit.me/auth/v2` for
    /// Didit); only [`DiditClient::register`] and [`DiditClient::verify_email`] use it.
    pub auth_base_url: Url,
    /// The application's API key, sent as `x-api-key` on every call. A sandbox application's
    /// key creates free, mocked sessions (`environment: "sandbox"`).
    pub api_key: SecretString,
    /// The longest wait for a TCP (and TLS) connection to open; a timeout is retryable.
    pub connect_timeout: Duration,
    /// The longest a whole exchange (connect, send, read the body) may take, for every call
    /// but the PDF report.
    pub request_timeout: Duration,
    /// The same bound for [`DiditClient::generate_pdf`]: Didit renders the report on every
    /// call, which takes several seconds.
    pub pdf_timeout: Duration,
    /// The `User-Agent` header; `didit-rs/<version>` by default.
    pub user_agent: String,
}

impl ClientConfig {
    /// A configuration with this crate's defaults: 5 s to connect, 30 s per call, 120 s for
    /// a PDF, and `didit-rs/<version>` as the user agent.
    pub fn new(base_url: Url, auth_base_url: Url, api_key: SecretString) -> Self {
        Self {
            base_url,
            auth_base_url,
            api_key,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            pdf_timeout: Duration::from_secs(120),
            user_agent: concat!("didit-rs/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("base_url", &self.base_url.as_str())
            .field("auth_base_url", &self.auth_base_url.as_str())
            .field("api_key", &"[REDACTED]")
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("pdf_timeout", &self.pdf_timeout)
            .finish()
    }
}

/// Sees every call a [`DiditClient`] makes: for metrics. Installed with
/// [`DiditClient::with_observer`].
pub trait RequestObserver: Send + Sync {
    /// Called once per call when it ends, successful or not. `status` is the HTTP status
    /// (200 for any success), `None` when no response came (timeout, connection refused);
    /// `elapsed` runs from sending the request to reading the whole body. Called on the
    /// caller's task: it should not block.
    fn observe(&self, endpoint: Endpoint, status: Option<u16>, elapsed: Duration);
}

/// The Didit operations this client can call, one per [`DiditClient`] method. It names the
/// call in a [`DiditError`], serves as a metric label ([`Endpoint::as_str`]) and tells which
/// rate-limit windows the call counts against ([`Endpoint::scopes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /v3/session/`: [`DiditClient::create_session`].
    CreateSession,
    /// `GET /v3/session/{id}/decision/`: [`DiditClient::decision`].
    Decision,
    /// `GET /v3/sessions/`: [`DiditClient::list_sessions`].
    ListSessions,
    /// `PATCH /v3/session/{id}/update-status/`: [`DiditClient::update_status`].
    UpdateStatus,
    /// `POST /v3/blocklist/add/`: [`DiditClient::blocklist_add`].
    BlocklistAdd,
    /// `GET /v3/session/{id}/generate-pdf/`: [`DiditClient::generate_pdf`].
    GeneratePdf,
    /// `DELETE /v3/session/{id}/delete/`: [`DiditClient::delete_session`].
    DeleteSession,
    /// `POST /v3/workflows/`: [`DiditClient::create_workflow`].
    CreateWorkflow,
    /// `GET /v3/workflows/`: [`DiditClient::list_workflows`].
    ListWorkflows,
    /// `GET /v3/workflows/{id}/`: [`DiditClient::get_workflow`].
    GetWorkflow,
    /// `POST /v3/webhook/destinations/`: [`DiditClient::create_webhook_destination`].
    CreateWebhookDestination,
    /// `GET /v3/webhook/destinations/`: [`DiditClient::list_webhook_destinations`].
    ListWebhookDestinations,
    /// `GET /v3/billing/balance/`: [`DiditClient::balance`].
    Balance,
    /// `POST /v3/billing/top-up/`: [`DiditClient::top_up`].
    TopUp,
    /// `POST programmatic/register/` on the account host: [`DiditClient::register`].
    Register,
    /// `POST programmatic/verify-email/` on the account host: [`DiditClient::verify_email`].
    VerifyEmail,
}

/// Didit's rate-limit scopes: independent 60-second sliding windows per API key. A call
/// counts against every scope [`Endpoint::scopes`] lists, and the first one exceeded answers
/// 429 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Every GET: 600/min.
    Get,
    /// Every POST, PATCH, DELETE other than session create: 300/min.
    Write,
    /// Session create: 600/min.
    Create,
    /// PDF generation: 50/min, counted on top of `Get`.
    Pdf,
    /// The account host, limited per IP, not per key.
    Account,
}

impl Endpoint {
    /// Every endpoint, in declaration order (e.g. to pre-register metric label values).
    pub const ALL: [Endpoint; 16] = [
        Endpoint::CreateSession,
        Endpoint::Decision,
        Endpoint::ListSessions,
        Endpoint::UpdateStatus,
        Endpoint::BlocklistAdd,
        Endpoint::GeneratePdf,
        Endpoint::DeleteSession,
        Endpoint::CreateWorkflow,
        Endpoint::ListWorkflows,
        Endpoint::GetWorkflow,
        Endpoint::CreateWebhookDestination,
        Endpoint::ListWebhookDestinations,
        Endpoint::Balance,
        Endpoint::TopUp,
        Endpoint::Register,
        Endpoint::VerifyEmail,
    ];

    /// A stable snake_case name (`session_create`, `decision`, …), fit for a metric label
    /// and the `Display` form.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::CreateSession => "session_create",
            Endpoint::Decision => "decision",
            Endpoint::ListSessions => "session_list",
            Endpoint::UpdateStatus => "update_status",
            Endpoint::BlocklistAdd => "blocklist_add",
            Endpoint::GeneratePdf => "generate_pdf",
            Endpoint::DeleteSession => "session_delete",
            Endpoint::CreateWorkflow => "workflow_create",
            Endpoint::ListWorkflows => "workflow_list",
            Endpoint::GetWorkflow => "workflow_get",
            Endpoint::CreateWebhookDestination => "webhook_destination_create",
            Endpoint::ListWebhookDestinations => "webhook_destination_list",
            Endpoint::Balance => "balance",
            Endpoint::TopUp => "top_up",
            Endpoint::Register => "register",
            Endpoint::VerifyEmail => "verify_email",
        }
    }

    /// The rate-limit scopes one call of this endpoint consumes.
    pub fn scopes(self) -> &'static [Scope] {
        match self {
            Endpoint::CreateSession => &[Scope::Create],
            Endpoint::GeneratePdf => &[Scope::Get, Scope::Pdf],
            Endpoint::Decision
            | Endpoint::ListSessions
            | Endpoint::ListWorkflows
            | Endpoint::GetWorkflow
            | Endpoint::ListWebhookDestinations
            | Endpoint::Balance => &[Scope::Get],
            Endpoint::UpdateStatus
            | Endpoint::BlocklistAdd
            | Endpoint::DeleteSession
            | Endpoint::CreateWorkflow
            | Endpoint::CreateWebhookDestination
            | Endpoint::TopUp => &[Scope::Write],
            Endpoint::Register | Endpoint::VerifyEmail => &[Scope::Account],
        }
    }

    /// Whether a 403 here means the key itself lacks access (an account problem) rather
    /// than this one resource being unavailable. Didit's July 2026 spec answers 403 for a
    /// missing or revoked key everywhere, so every call any valid key may make counts; a
    /// 403 on a PDF (an unfinished session) or a status change (a permission) does not.
    pub(crate) fn forbidden_means_account(self) -> bool {
        matches!(
            self,
            Endpoint::CreateSession
                | Endpoint::Decision
                | Endpoint::ListSessions
                | Endpoint::ListWorkflows
                | Endpoint::GetWorkflow
                | Endpoint::Balance
        )
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Scope {
    /// A stable lower-case name (`get`, `write`, `create`, `pdf`, `account`), fit for a
    /// metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Get => "get",
            Scope::Write => "write",
            Scope::Create => "create",
            Scope::Pdf => "pdf",
            Scope::Account => "account",
        }
    }
}

/// A Didit API client: one async method per call, each returning the typed response or a
/// classified [`DiditError`].
///
/// Cheap to clone: clones share the connection pool. It never follows redirects (a
/// redirect would drop `x-api-key`) and never retries: what to do about a failure is the
/// caller's choice, guided by [`DiditError::class`].
///
/// ```no_run
/// # async fn run() -> Result<(), didit::DiditError> {
/// use didit::{ClientConfig, DiditClient, SessionStatus};
///
/// let config = ClientConfig::new(
///     "https://verification.didit.me".parse().expect("url"),
///     "https://apx.didit.me/auth/v2".parse().expect("url"),
///     std::env::var("DIDIT_API_KEY").unwrap_or_default().into(),
/// );
/// let client = DiditClient::new(&config)?;
/// let session_id = "11111111-2222-3333-4444-555555555555".parse().expect("uuid");
/// let decision = client.decision(session_id).await?;
/// if decision.status == SessionStatus::Approved {
///     println!("approved");
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct DiditClient {
    http: reqwest::Client,
    base_url: Url,
    auth_base_url: Url,
    api_key: SecretString,
    request_timeout: Duration,
    pdf_timeout: Duration,
    observer: Option<Arc<dyn RequestObserver>>,
}

impl fmt::Debug for DiditClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiditClient")
            .field("base_url", &self.base_url.as_str())
            .field("api_key", &"[REDACTED]")
            .finish()
    }
}

/// A request body: JSON, or none.
enum Body<'a, B: Serialize> {
    None,
    Json(&'a B),
}

impl DiditClient {
    /// A client for `config`. Fails only when the TLS backend cannot start.
    pub fn new(config: &ClientConfig) -> Result<Self, DiditError> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(config.user_agent.as_str())
            .build()
            .map_err(|e| {
                DiditError::new(Endpoint::Decision, DiditErrorKind::Transport(e.to_string()))
            })?;
        Ok(Self {
            http,
            base_url: config.base_url.clone(),
            auth_base_url: config.auth_base_url.clone(),
            api_key: config.api_key.clone(),
            request_timeout: config.request_timeout,
            pdf_timeout: config.pdf_timeout,
            observer: None,
        })
    }

    /// Reports every call (its endpoint, HTTP status and duration) to `observer`, e.g. to
    /// count it in metrics.
    pub fn with_observer(mut self, observer: Arc<dyn RequestObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The verification host this client calls.
    pub fn base_url(&self) -> &Url {
        &self.base_url
    }

    /// Creates a verification session (`POST /v3/session/`, answered 201) and returns the
    /// hosted `url` to send the person to.
    ///
    /// Didit's only idempotency: with `vendor_data` set, an unfinished session (`Not
    /// Started`, `In Progress`, `Resubmitted`, `Awaiting User`) of the same user on the
    /// workflow's latest version is returned instead of a new one, with its own status.
    /// A 400 saying there are not enough credits classifies as
    /// [`AccountPause::NoCredits`](crate::AccountPause::NoCredits).
    pub async fn create_session(
        &self,
        req: &CreateSessionRequest,
    ) -> Result<CreatedSession, DiditError> {
        self.json(
            Endpoint::CreateSession,
            Method::POST,
            "/v3/session/",
            Body::Json(req),
        )
        .await
    }

    /// Reads everything the session has produced so far
    /// (`GET /v3/session/{id}/decision/`). Callable at any point of the lifecycle; each
    /// feature array is `None` until that step ran. An unknown or deleted session answers
    /// 404 (a [`ErrorClass::Request`](crate::ErrorClass::Request) error).
    pub async fn decision(&self, session_id: Uuid) -> Result<Decision, DiditError> {
        let path = format!("/v3/session/{session_id}/decision/");
        self.json(Endpoint::Decision, Method::GET, &path, Body::<()>::None)
            .await
    }

    /// Lists sessions newest first (`GET /v3/sessions/`), one page of at most
    /// `query.limit` rows (Didit's default 50); follow `offset` for more.
    pub async fn list_sessions(
        &self,
        query: &SessionQuery,
    ) -> Result<Page<SessionSummary>, DiditError> {
        let mut url = self.url(&self.base_url, "/v3/sessions/");
        {
            let mut pairs = url.query_pairs_mut();
            if let Some(v) = &query.vendor_data {
                pairs.append_pair("vendor_data", v);
            }
            if let Some(v) = &query.workflow_id {
                pairs.append_pair("workflow_id", &v.to_string());
            }
            if let Some(v) = &query.status {
                pairs.append_pair("status", v);
            }
            if let Some(v) = query.limit {
                pairs.append_pair("limit", &v.to_string());
            }
            if let Some(v) = query.offset {
                pairs.append_pair("offset", &v.to_string());
            }
        }
        let response = self
            .send(
                Endpoint::ListSessions,
                Method::GET,
                url,
                Body::<()>::None,
                self.request_timeout,
            )
            .await?;
        decode(Endpoint::ListSessions, &response)
    }

    /// Approves, declines or asks for resubmission of a session
    /// (`PATCH /v3/session/{id}/update-status/`). Didit accepts it only from `Approved`,
    /// `Declined`, `In Review`, `Kyc Expired`, `Abandoned` or `Resubmitted` (see
    /// [`SessionStatus::accepts_status_update`](crate::SessionStatus::accepts_status_update)),
    /// answers with the session id alone, and fires a `status.updated` webhook: read the
    /// decision again for the new state. Re-sending the current status may answer 400.
    pub async fn update_status(
        &self,
        session_id: Uuid,
        req: &UpdateStatusRequest,
    ) -> Result<StatusUpdated, DiditError> {
        let path = format!("/v3/session/{session_id}/update-status/");
        self.json(
            Endpoint::UpdateStatus,
            Method::PATCH,
            &path,
            Body::Json(req),
        )
        .await
    }

    /// Adds the face, document, phone and/or e-mail of a session to the application's
    /// blocklist (`POST /v3/blocklist/add/`); later sessions that match are declined. At
    /// least one flag must be true.
    pub async fn blocklist_add(
        &self,
        req: &BlocklistAddRequest,
    ) -> Result<BlocklistAdded, DiditError> {
        self.json(
            Endpoint::BlocklistAdd,
            Method::POST,
            "/v3/blocklist/add/",
            Body::Json(req),
        )
        .await
    }

    /// The session's PDF report (`GET /v3/session/{id}/generate-pdf/`): raw
    /// `application/pdf` bytes, rendered anew on every call, bounded by
    /// [`ClientConfig::pdf_timeout`]. Only for `Approved`, `Declined`, `In Review` and
    /// `Kyc Expired` sessions; any other answers 403, classified as a request error.
    pub async fn generate_pdf(&self, session_id: Uuid) -> Result<Vec<u8>, DiditError> {
        let url = self.url(
            &self.base_url,
            &format!("/v3/session/{session_id}/generate-pdf/"),
        );
        self.send(
            Endpoint::GeneratePdf,
            Method::GET,
            url,
            Body::<()>::None,
            self.pdf_timeout,
        )
        .await
    }

    /// Deletes a session and its media (`DELETE /v3/session/{id}/delete/`). Didit answers
    /// 204 (July 2026) or 200 with a JSON summary (August 2026); both mean done. Not
    /// idempotent: deleting again answers 404.
    pub async fn delete_session(&self, session_id: Uuid) -> Result<(), DiditError> {
        let url = self.url(&self.base_url, &format!("/v3/session/{session_id}/delete/"));
        self.send(
            Endpoint::DeleteSession,
            Method::DELETE,
            url,
            Body::<()>::None,
            self.request_timeout,
        )
        .await
        .map(drop)
    }

    /// Creates a workflow (`POST /v3/workflows/`): the ordered checks a session runs.
    /// Not idempotent: each call creates one more.
    pub async fn create_workflow(
        &self,
        req: &CreateWorkflowRequest,
    ) -> Result<Workflow, DiditError> {
        self.json(
            Endpoint::CreateWorkflow,
            Method::POST,
            "/v3/workflows/",
            Body::Json(req),
        )
        .await
    }

    /// Lists the application's workflows (`GET /v3/workflows/`), one row per version,
    /// newest first.
    pub async fn list_workflows(&self) -> Result<Page<Workflow>, DiditError> {
        self.json(
            Endpoint::ListWorkflows,
            Method::GET,
            "/v3/workflows/",
            Body::<()>::None,
        )
        .await
    }

    /// Reads one workflow version (`GET /v3/workflows/{id}/`), e.g. for its
    /// `session_expiration_time`.
    pub async fn get_workflow(&self, workflow: Uuid) -> Result<Workflow, DiditError> {
        let path = format!("/v3/workflows/{workflow}/");
        self.json(Endpoint::GetWorkflow, Method::GET, &path, Body::<()>::None)
            .await
    }

    /// Registers a webhook destination (`POST /v3/webhook/destinations/`). The answer is
    /// the only one that carries the destination's signing secret
    /// ([`WebhookDestination::secret_shared_key`]): keep it.
    pub async fn create_webhook_destination(
        &self,
        req: &CreateWebhookDestination,
    ) -> Result<WebhookDestination, DiditError> {
        self.json(
            Endpoint::CreateWebhookDestination,
            Method::POST,
            "/v3/webhook/destinations/",
            Body::Json(req),
        )
        .await
    }

    /// Lists the application's webhook destinations (`GET /v3/webhook/destinations/`),
    /// without their secrets.
    pub async fn list_webhook_destinations(&self) -> Result<Vec<WebhookDestination>, DiditError> {
        self.json(
            Endpoint::ListWebhookDestinations,
            Method::GET,
            "/v3/webhook/destinations/",
            Body::<()>::None,
        )
        .await
    }

    /// The account's credit balance (`GET /v3/billing/balance/`).
    pub async fn balance(&self) -> Result<Balance, DiditError> {
        self.json(
            Endpoint::Balance,
            Method::GET,
            "/v3/billing/balance/",
            Body::<()>::None,
        )
        .await
    }

    /// Starts a credit top-up (`POST /v3/billing/top-up/`, at least $50): the answer is a
    /// checkout link a person must complete; no credit is added by this call alone.
    pub async fn top_up(&self, req: &TopUpRequest) -> Result<TopUp, DiditError> {
        self.json(
            Endpoint::TopUp,
            Method::POST,
            "/v3/billing/top-up/",
            Body::Json(req),
        )
        .await
    }

    /// Registers an account on the account host (`POST programmatic/register/`, no API key
    /// needed); Didit e-mails a code to pass to [`DiditClient::verify_email`]. The password
    /// needs 8 characters with upper and lower case, a digit and a symbol.
    pub async fn register(
        &self,
        email: &str,
        password: &SecretString,
    ) -> Result<Registered, DiditError> {
        let body = serde_json::json!({"email": email, "password": password.expose_secret()});
        let url = self.url(&self.auth_base_url, "programmatic/register/");
        let bytes = self
            .send(
                Endpoint::Register,
                Method::POST,
                url,
                Body::Json(&body),
                self.request_timeout,
            )
            .await?;
        decode(Endpoint::Register, &bytes)
    }

    /// Confirms a registration with the e-mailed code (`POST programmatic/verify-email/`)
    /// and returns the account's applications with their API keys.
    pub async fn verify_email(
        &self,
        email: &str,
        code: &str,
    ) -> Result<VerifiedAccount, DiditError> {
        let body = serde_json::json!({"email": email, "code": code});
        let url = self.url(&self.auth_base_url, "programmatic/verify-email/");
        let bytes = self
            .send(
                Endpoint::VerifyEmail,
                Method::POST,
                url,
                Body::Json(&body),
                self.request_timeout,
            )
            .await?;
        decode(Endpoint::VerifyEmail, &bytes)
    }

    /// Joins a path to a base URL, keeping the base's own path (`/auth/v2` on the sandbox).
    fn url(&self, base: &Url, path: &str) -> Url {
        let mut url = base.clone();
        let joined = format!(
            "{}/{}",
            base.path().trim_end_matches('/'),
            path.trim_start_matches('/')
        );
        url.set_path(&joined);
        url
    }

    async fn json<T: DeserializeOwned, B: Serialize>(
        &self,
        endpoint: Endpoint,
        method: Method,
        path: &str,
        body: Body<'_, B>,
    ) -> Result<T, DiditError> {
        let url = self.url(&self.base_url, path);
        let bytes = self
            .send(endpoint, method, url, body, self.request_timeout)
            .await?;
        decode(endpoint, &bytes)
    }

    /// Sends one request and returns the body of a 2xx answer.
    async fn send<B: Serialize>(
        &self,
        endpoint: Endpoint,
        method: Method,
        url: Url,
        body: Body<'_, B>,
        timeout: Duration,
    ) -> Result<Vec<u8>, DiditError> {
        let started = std::time::Instant::now();
        let result = self.exchange(endpoint, method, url, body, timeout).await;
        if let Some(observer) = &self.observer {
            let status = match &result {
                Ok(_) => Some(200),
                Err(e) => e.status(),
            };
            observer.observe(endpoint, status, started.elapsed());
        }
        result
    }

    async fn exchange<B: Serialize>(
        &self,
        endpoint: Endpoint,
        method: Method,
        url: Url,
        body: Body<'_, B>,
        timeout: Duration,
    ) -> Result<Vec<u8>, DiditError> {
        let mut request = self
            .http
            .request(method, url)
            .timeout(timeout)
            .header("x-api-key", self.api_key.expose_secret())
            .header("accept", "application/json");
        if let Body::Json(b) = body {
            request = request.json(b);
        }
        let response = request
            .send()
            .await
            .map_err(|e| DiditError::new(endpoint, transport_kind(&e)))?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| DiditError::new(endpoint, transport_kind(&e)))?;
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        Err(DiditError::new(
            endpoint,
            DiditErrorKind::Status {
                status: status.as_u16(),
                body: Box::new(ErrorBody::parse(&bytes)),
                retry_after: retry_after(status, &headers),
            },
        ))
    }
}

/// Parses a 2xx body. The error keeps serde's explanation but not the values it quotes
/// (a decision carries names and document numbers).
fn decode<T: DeserializeOwned>(endpoint: Endpoint, bytes: &[u8]) -> Result<T, DiditError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let reason = crate::redact_values(&e.to_string());
        DiditError::new(endpoint, DiditErrorKind::Decode(reason))
    })
}

fn retry_after(status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    if status != StatusCode::TOO_MANY_REQUESTS && !status.is_server_error() {
        return None;
    }
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, std::time::SystemTime::now())
}

fn transport_kind(e: &reqwest::Error) -> DiditErrorKind {
    if e.is_timeout() {
        DiditErrorKind::Timeout
    } else if e.is_connect() {
        DiditErrorKind::Connect(root_cause(e))
    } else {
        DiditErrorKind::Transport(root_cause(e))
    }
}

/// The innermost error message: reqwest's own text hides the cause ("error sending request").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut current = e;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}
