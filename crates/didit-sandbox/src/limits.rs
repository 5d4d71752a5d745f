//! Didit's rate limits, the faults a test can inject, and the counters and call log behind
//! `GET /sandbox/stats` and `GET /sandbox/calls`.
//!
//! Each scope keeps the instants of the requests it admitted in its current window (a
//! sliding window, as Didit's), so the count after each admission is the exact number of
//! requests in the window ending then; its maximum is the `peak` a test compares with a
//! budget. Refused requests are not admitted, so they do not extend a penalty.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    fmt,
    str::FromStr,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::{json, Value};

/// A rate-limit scope, named as in `--limit SCOPE=N/WINDOW`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RateScope {
    /// Every GET: 600/min.
    Get,
    /// Every POST, PATCH, DELETE other than session create: 300/min.
    Write,
    /// Session create: 600/min.
    Create,
    /// PDF generation: 50/min, counted on top of `Get`.
    Pdf,
}

impl RateScope {
    /// Every scope, in declaration order.
    pub const ALL: [RateScope; 4] = [
        RateScope::Get,
        RateScope::Write,
        RateScope::Create,
        RateScope::Pdf,
    ];

    /// The name `--limit` and `GET /sandbox/stats` use: `get`, `write`, `create` or `pdf`.
    pub fn as_str(self) -> &'static str {
        match self {
            RateScope::Get => "get",
            RateScope::Write => "write",
            RateScope::Create => "create",
            RateScope::Pdf => "pdf",
        }
    }

    /// Didit's documented limit per 60 s.
    fn didit_default(self) -> u32 {
        match self {
            RateScope::Get | RateScope::Create => 600,
            RateScope::Write => 300,
            RateScope::Pdf => 50,
        }
    }

    /// The subject of Didit's 429 message.
    fn message_subject(self) -> &'static str {
        match self {
            RateScope::Get => "GET request",
            RateScope::Write => "Write request",
            RateScope::Create => "Session creation",
            RateScope::Pdf => "Session PDF generation",
        }
    }
}

impl FromStr for RateScope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RateScope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| format!("unknown scope \"{s}\" (expected get, write, create or pdf)"))
    }
}

/// The longest window a limit may have. Didit's are a minute; a day is plenty for a test,
/// and a bound keeps `Retry-After` and the reset time far from overflowing.
pub const MAX_WINDOW: Duration = Duration::from_secs(86_400);

/// One limit: at most `max` requests in any `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// The most requests admitted in any window.
    pub max: u32,
    /// The sliding window's length, at most [`MAX_WINDOW`].
    pub window: Duration,
}

impl Limit {
    /// A limit whose window is longer than zero (a zero window would admit everything) and
    /// at most [`MAX_WINDOW`].
    pub fn new(max: u32, window: Duration) -> Result<Self, String> {
        if window.is_zero() {
            return Err("the window must be longer than zero".to_owned());
        }
        if window > MAX_WINDOW {
            return Err(format!(
                "the window must be at most {} s (one day), got {} ms",
                MAX_WINDOW.as_secs(),
                window.as_millis()
            ));
        }
        Ok(Self { max, window })
    }
}

/// `SCOPE=N/WINDOW`, e.g. `get=60/1s`, `create=10/500ms`, `write=300/1m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSpec {
    /// The scope whose limit is replaced.
    pub scope: RateScope,
    /// Its new limit.
    pub limit: Limit,
}

impl FromStr for LimitSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scope, rest) = s
            .split_once('=')
            .ok_or_else(|| format!("expected SCOPE=N/WINDOW such as get=60/1s, got \"{s}\""))?;
        let (max, window) = rest
            .split_once('/')
            .ok_or_else(|| format!("expected N/WINDOW such as 60/1s, got \"{rest}\""))?;
        let max: u32 = max
            .parse()
            .map_err(|_| format!("\"{max}\" is not a request count"))?;
        Ok(LimitSpec {
            scope: scope.parse()?,
            limit: Limit::new(max, parse_window(window)?)?,
        })
    }
}

/// `500ms`, `1s`, `2m`; [`Limit::new`] then checks the length.
fn parse_window(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("\"{s}\" is not a window such as 500ms, 1s or 1m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => n
            .checked_mul(60)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("\"{s}\" is too long a window")),
        _ => Err(format!("unknown unit in \"{s}\" (ms, s or m)")),
    }
}

/// Why a request was refused with 429.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimited {
    pub scope: RateScope,
    pub limit: Limit,
    /// Seconds until a slot frees, at least 1 (Didit never sends 0).
    pub retry_after_s: u64,
    /// Unix seconds when a slot frees.
    pub reset_epoch_s: u64,
}

impl RateLimited {
    /// Didit's message for the scope.
    pub fn detail(&self) -> String {
        let per = if self.limit.window == Duration::from_secs(60) {
            "minute".to_owned()
        } else {
            format!("{} ms", self.limit.window.as_millis())
        };
        format!(
            "{} rate limit exceeded. You can make up to {} requests per {per}.",
            self.scope.message_subject(),
            self.limit.max
        )
    }
}

#[derive(Debug)]
struct Window {
    limit: Limit,
    admitted: VecDeque<Instant>,
    peak: usize,
    refused: u64,
}

impl Window {
    fn evict(&mut self, now: Instant) {
        while let Some(first) = self.admitted.front() {
            if now.duration_since(*first) >= self.limit.window {
                self.admitted.pop_front();
            } else {
                break;
            }
        }
    }
}

/// The sliding windows of every scope.
#[derive(Debug)]
pub struct Limiter {
    windows: BTreeMap<RateScope, Window>,
}

impl Limiter {
    pub fn new(overrides: &[LimitSpec]) -> Self {
        let mut windows: BTreeMap<RateScope, Window> = RateScope::ALL
            .into_iter()
            .map(|scope| {
                let limit = Limit {
                    max: scope.didit_default(),
                    window: Duration::from_secs(60),
                };
                (
                    scope,
                    Window {
                        limit,
                        admitted: VecDeque::new(),
                        peak: 0,
                        refused: 0,
                    },
                )
            })
            .collect();
        for spec in overrides {
            if let Some(w) = windows.get_mut(&spec.scope) {
                w.limit = spec.limit;
            }
        }
        Self { windows }
    }

    pub fn set(&mut self, spec: LimitSpec) {
        if let Some(w) = self.windows.get_mut(&spec.scope) {
            w.limit = spec.limit;
            w.admitted.clear();
            w.peak = 0;
        }
    }

    /// Admits one request counted in every scope of `scopes`, or refuses it on the first
    /// scope that is full (and then counts it in none).
    pub fn admit(&mut self, scopes: &[RateScope], now: Instant) -> Result<(), RateLimited> {
        for scope in scopes {
            let Some(w) = self.windows.get_mut(scope) else {
                continue;
            };
            w.evict(now);
            if w.admitted.len() >= w.limit.max as usize {
                w.refused += 1;
                let wait = w
                    .admitted
                    .front()
                    .map(|first| w.limit.window.saturating_sub(now.duration_since(*first)))
                    .unwrap_or(w.limit.window);
                let retry_after_s = wait.as_secs_f64().ceil().max(1.0) as u64;
                let epoch = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                return Err(RateLimited {
                    scope: *scope,
                    limit: w.limit,
                    retry_after_s,
                    reset_epoch_s: epoch.saturating_add(retry_after_s),
                });
            }
        }
        for scope in scopes {
            if let Some(w) = self.windows.get_mut(scope) {
                w.admitted.push_back(now);
                w.peak = w.peak.max(w.admitted.len());
            }
        }
        Ok(())
    }

    pub fn reset_peaks(&mut self) {
        for w in self.windows.values_mut() {
            w.peak = w.admitted.len();
            w.refused = 0;
        }
    }

    pub fn to_json(&self) -> Value {
        let scopes: serde_json::Map<String, Value> = self
            .windows
            .iter()
            .map(|(scope, w)| {
                (
                    scope.as_str().to_owned(),
                    json!({
                        "limit": w.limit.max,
                        "window_ms": w.limit.window.as_millis() as u64,
                        "peak_in_window": w.peak,
                        "rate_limited": w.refused,
                    }),
                )
            })
            .collect();
        Value::Object(scopes)
    }
}

/// Endpoint names as `/sandbox/stats` and `fail_next` spell them (the client's metric labels).
pub const ENDPOINT_NAMES: [&str; 17] = [
    "session_create",
    "decision",
    "session_list",
    "update_status",
    "blocklist_add",
    "generate_pdf",
    "session_delete",
    "workflow_create",
    "workflow_list",
    "workflow_get",
    "workflow_update",
    "webhook_destination_create",
    "webhook_destination_list",
    "balance",
    "top_up",
    "register",
    "verify_email",
];

/// Faults a test asks for: slowness, random failures (an outage at rate 1), failures of the
/// next N calls, and creates Didit carries out but answers late or not at all.
#[derive(Debug)]
pub struct Faults {
    pub latency: Duration,
    pub error_rate: f64,
    /// What a call failed by `error_rate` is answered: a 5xx or 429, with or without
    /// `Retry-After`.
    pub outage: Injected,
    /// Endpoint → (calls left to fail, status to answer).
    fail_next: HashMap<String, (u32, u16)>,
    /// (successful creates left, how each is answered).
    late_create: Option<(u32, LateAnswer)>,
    pub injected: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            error_rate: 0.0,
            outage: Injected {
                status: 500,
                retry_after_s: None,
            },
            fail_next: HashMap::new(),
            late_create: None,
            injected: 0,
        }
    }
}

/// An injected failure: the status, and the `Retry-After` seconds it carries, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Injected {
    pub status: u16,
    pub retry_after_s: Option<u64>,
}

/// How a create Didit carried out (the session is stored and listed) reaches the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LateAnswer {
    /// The answer leaves this long after the session was stored.
    After(Duration),
    /// The connection breaks before the body: the client never learns the session's id.
    Reset,
}

impl Faults {
    pub fn new(latency: Duration, error_rate: f64) -> Self {
        Self {
            latency,
            error_rate,
            ..Self::default()
        }
    }

    pub fn fail_next(&mut self, endpoint: &str, count: u32, status: u16) {
        if count == 0 {
            self.fail_next.remove(endpoint);
        } else {
            self.fail_next.insert(endpoint.to_owned(), (count, status));
        }
    }

    /// The next `count` successful creates are answered as `how` says (0: none).
    pub fn answer_creates_late(&mut self, count: u32, how: LateAnswer) {
        self.late_create = (count > 0).then_some((count, how));
    }

    /// How this successful create is answered, when it is one of the late ones.
    pub fn late_answer(&mut self) -> Option<LateAnswer> {
        let (left, how) = self.late_create.as_mut()?;
        let how = *how;
        *left -= 1;
        if *left == 0 {
            self.late_create = None;
        }
        Some(how)
    }

    /// The failure to answer this call with, if any. `roll` is a uniform sample in [0, 1).
    pub fn injected_failure(&mut self, endpoint: &str, roll: f64) -> Option<Injected> {
        let planned = match self.fail_next.get_mut(endpoint) {
            Some((left, status)) => {
                let status = *status;
                *left -= 1;
                if *left == 0 {
                    self.fail_next.remove(endpoint);
                }
                Some(Injected {
                    status,
                    retry_after_s: None,
                })
            }
            None => (roll < self.error_rate).then_some(self.outage),
        };
        if planned.is_some() {
            self.injected += 1;
        }
        planned
    }
}

/// The most calls `GET /sandbox/calls` keeps; older ones are dropped first.
pub const MAX_CALLS: usize = 10_000;

/// One API call as the sandbox received it, for `GET /sandbox/calls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub endpoint: &'static str,
    pub status: u16,
    /// Unix ms when the request arrived (before any injected latency).
    pub received_ms: u64,
    /// The `vendor_data` a create carried or a session list filtered on.
    pub vendor_data: Option<String>,
}

/// Per-endpoint counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// Endpoint → status → count.
    responses: BTreeMap<String, BTreeMap<u16, u64>>,
    pub sessions_created: u64,
    pub sessions_reused: u64,
    /// The latest API calls, oldest first, at most [`MAX_CALLS`].
    calls: VecDeque<Call>,
    /// The e-mails Didit would have sent (update-status with `send_email`), oldest first:
    /// `{"session_id", "status", "email_address", "email_language"}`.
    pub emails: Vec<Value>,
}

impl Stats {
    pub fn record(&mut self, endpoint: &str, status: u16) {
        *self
            .responses
            .entry(endpoint.to_owned())
            .or_default()
            .entry(status)
            .or_default() += 1;
    }

    pub fn log(&mut self, call: Call) {
        if self.calls.len() >= MAX_CALLS {
            self.calls.pop_front();
        }
        self.calls.push_back(call);
    }

    pub fn reset(&mut self) {
        *self = Stats::default();
    }

    /// `GET /sandbox/calls`: the logged calls, oldest first.
    pub fn calls_json(&self) -> Value {
        let calls: Vec<Value> = self
            .calls
            .iter()
            .map(|c| {
                json!({
                    "endpoint": c.endpoint,
                    "status": c.status,
                    "received_ms": c.received_ms,
                    "vendor_data": c.vendor_data,
                })
            })
            .collect();
        json!({ "calls": calls })
    }

    pub fn to_json(&self) -> Value {
        let requests: serde_json::Map<String, Value> = self
            .responses
            .iter()
            .map(|(endpoint, by_status)| (endpoint.clone(), json!(by_status.values().sum::<u64>())))
            .collect();
        let responses: serde_json::Map<String, Value> = self
            .responses
            .iter()
            .map(|(endpoint, by_status)| {
                let statuses: serde_json::Map<String, Value> = by_status
                    .iter()
                    .map(|(status, n)| (status.to_string(), json!(n)))
                    .collect();
                (endpoint.clone(), Value::Object(statuses))
            })
            .collect();
        json!({
            "requests": requests,
            "responses": responses,
            "sessions_created": self.sessions_created,
            "sessions_reused": self.sessions_reused,
            "emails": self.emails,
        })
    }
}

impl fmt::Display for LimitSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={}/{}ms",
            self.scope.as_str(),
            self.limit.max,
            self.limit.window.as_millis()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_flags_parse_and_bad_ones_say_why() {
        let spec: LimitSpec = "get=60/1s".parse().expect("valid");
        assert_eq!(spec.scope, RateScope::Get);
        assert_eq!(spec.limit.max, 60);
        assert_eq!(spec.limit.window, Duration::from_secs(1));
        let spec: LimitSpec = "pdf=5/250ms".parse().expect("valid");
        assert_eq!(spec.limit.window, Duration::from_millis(250));
        assert_eq!(
            "write=3/2m"
                .parse::<LimitSpec>()
                .expect("valid")
                .limit
                .window,
            Duration::from_secs(120)
        );
        for bad in [
            "get",
            "get=60",
            "post=1/1s",
            "get=x/1s",
            "get=1/0s",
            "get=1/1h",
            "get=1/999999999999999999m",
            "get=1/2d",
            "get=1/86401s",
        ] {
            assert!(bad.parse::<LimitSpec>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn the_window_slides_and_pdf_counts_as_get_too() {
        let mut limiter = Limiter::new(&[
            "get=3/1s".parse().expect("valid"),
            "pdf=1/1s".parse().expect("valid"),
        ]);
        let t0 = Instant::now();
        limiter
            .admit(&[RateScope::Get, RateScope::Pdf], t0)
            .expect("first pdf");
        let refused = limiter
            .admit(&[RateScope::Get, RateScope::Pdf], t0)
            .expect_err("second pdf in the window");
        assert_eq!(refused.scope, RateScope::Pdf);
        assert_eq!(refused.retry_after_s, 1);
        limiter.admit(&[RateScope::Get], t0).expect("get 2");
        limiter
            .admit(&[RateScope::Get], t0 + Duration::from_millis(500))
            .expect("get 3");
        let refused = limiter
            .admit(&[RateScope::Get], t0 + Duration::from_millis(600))
            .expect_err("get full");
        assert_eq!(
            refused.detail(),
            "GET request rate limit exceeded. You can make up to 3 requests per 1000 ms."
        );
        limiter
            .admit(&[RateScope::Get], t0 + Duration::from_millis(1000))
            .expect("the first two left the window");
        let stats = limiter.to_json();
        assert_eq!(stats["get"]["peak_in_window"], 3);
        assert_eq!(stats["pdf"]["rate_limited"], 1);
    }

    #[test]
    fn fail_next_counts_down_before_the_random_rate() {
        let mut faults = Faults::default();
        faults.fail_next("decision", 2, 503);
        let status = |f: Option<Injected>| f.map(|f| f.status);
        assert_eq!(status(faults.injected_failure("decision", 0.9)), Some(503));
        assert_eq!(faults.injected_failure("session_create", 0.0), None);
        assert_eq!(status(faults.injected_failure("decision", 0.9)), Some(503));
        assert_eq!(faults.injected_failure("decision", 0.9), None);
        faults.error_rate = 0.5;
        assert_eq!(status(faults.injected_failure("decision", 0.4)), Some(500));
        assert_eq!(faults.injected, 3);
    }

    #[test]
    fn an_outage_answers_its_status_and_retry_after_and_late_creates_count_down() {
        let mut faults = Faults::new(Duration::ZERO, 1.0);
        faults.outage = Injected {
            status: 429,
            retry_after_s: Some(2),
        };
        assert_eq!(
            faults.injected_failure("session_list", 0.99),
            Some(Injected {
                status: 429,
                retry_after_s: Some(2)
            })
        );
        let late = LateAnswer::After(Duration::from_millis(1500));
        faults.answer_creates_late(2, late);
        assert_eq!(faults.late_answer(), Some(late));
        assert_eq!(faults.late_answer(), Some(late));
        assert_eq!(faults.late_answer(), None, "only the next two creates");
        faults.answer_creates_late(3, LateAnswer::Reset);
        faults.answer_creates_late(0, LateAnswer::Reset);
        assert_eq!(faults.late_answer(), None, "count 0 clears the fault");
    }

    #[test]
    fn the_call_log_keeps_the_latest_calls() {
        let mut stats = Stats::default();
        for i in 0..=MAX_CALLS as u64 {
            stats.log(Call {
                endpoint: "session_list",
                status: 500,
                received_ms: i,
                vendor_data: None,
            });
        }
        let calls = stats.calls_json();
        let calls = calls["calls"].as_array().expect("calls");
        assert_eq!(calls.len(), MAX_CALLS);
        assert_eq!(calls[0]["received_ms"], 1, "the oldest call was dropped");
    }
}
