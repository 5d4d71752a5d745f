//! The Didit HTTP client: one typed method per call the fleet makes.
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
#[derive(Clone)]
pub struct ClientConfig {
    /// `https://verification.didit.me` for Didit, or a sandbox's address.
    pub base_url: Url,
    /// The registration host (`https://apx.didit.me/auth/v2` for Didit).
    pub auth_base_url: Url,
    /// Sent as `x-api-key` on every call.
    pub api_key: SecretString,
    pub connect_timeout: Duration,
    /// The whole exchange, for every call but the PDF report.
    pub request_timeout: Duration,
    /// Generating a PDF report takes Didit longer.
    pub pdf_timeout: Duration,
    pub user_agent: String,
}

impl ClientConfig {
    /// Didit's defaults: 5 s to connect, 30 s per call, 120 s for a PDF.
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

/// Sees every call a [`DiditClient`] makes: for metrics. `status` is the HTTP status, `None`
/// when no response came (timeout, connection refused).
pub trait RequestObserver: Send + Sync {
    fn observe(&self, endpoint: Endpoint, status: Option<u16>, elapsed: Duration);
}

/// The Didit operations the fleet uses. Used as the `endpoint` metric label and to pick the
/// rate-limit bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    CreateSession,
    Decision,
    ListSessions,
    UpdateStatus,
    BlocklistAdd,
    GeneratePdf,
    DeleteSession,
    CreateWorkflow,
    ListWorkflows,
    GetWorkflow,
    CreateWebhookDestination,
    ListWebhookDestinations,
    Balance,
    TopUp,
    Register,
    VerifyEmail,
}

/// Didit's rate-limit scopes (60 s sliding windows per API key).
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

/// A Didit API client. Cheap to clone: the connection pool is shared.
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

    pub fn base_url(&self) -> &Url {
        &self.base_url
    }

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

    pub async fn decision(&self, session_id: Uuid) -> Result<Decision, DiditError> {
        let path = format!("/v3/session/{session_id}/decision/");
        self.json(Endpoint::Decision, Method::GET, &path, Body::<()>::None)
            .await
    }

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

    /// The session's PDF report (raw `application/pdf` bytes).
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

    /// Deletes a session. Didit answers 204 (July 2026) or 200 with a JSON summary
    /// (August 2026); both mean done.
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

    pub async fn list_workflows(&self) -> Result<Page<Workflow>, DiditError> {
        self.json(
            Endpoint::ListWorkflows,
            Method::GET,
            "/v3/workflows/",
            Body::<()>::None,
        )
        .await
    }

    pub async fn get_workflow(&self, workflow: Uuid) -> Result<Workflow, DiditError> {
        let path = format!("/v3/workflows/{workflow}/");
        self.json(Endpoint::GetWorkflow, Method::GET, &path, Body::<()>::None)
            .await
    }

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

    pub async fn list_webhook_destinations(&self) -> Result<Vec<WebhookDestination>, DiditError> {
        self.json(
            Endpoint::ListWebhookDestinations,
            Method::GET,
            "/v3/webhook/destinations/",
            Body::<()>::None,
        )
        .await
    }

    pub async fn balance(&self) -> Result<Balance, DiditError> {
        self.json(
            Endpoint::Balance,
            Method::GET,
            "/v3/billing/balance/",
            Body::<()>::None,
        )
        .await
    }

    pub async fn top_up(&self, req: &TopUpRequest) -> Result<TopUp, DiditError> {
        self.json(
            Endpoint::TopUp,
            Method::POST,
            "/v3/billing/top-up/",
            Body::Json(req),
        )
        .await
    }

    /// Programmatic registration on the account host (no API key needed).
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
