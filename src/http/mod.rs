//! The HTTP surface: Didit's webhooks in, verification requests in, status and health out.
//!
//! Handlers here only verify, parse and enqueue; they never call Didit, so a Didit outage or
//! an account pause never stops webhooks from being accepted.

mod intake;
mod webhook;

use std::sync::atomic::Ordering;

use axum::{extract::State, http::StatusCode, routing::get, routing::post, Router};

pub use crate::state::AppState;

/// Largest webhook body accepted (Didit's decisions are tens of KiB).
const WEBHOOK_BODY_LIMIT: usize = 1024 * 1024;

/// The public routes: webhooks and health.
pub fn public_router(state: AppState) -> Router {
    Router::new()
        .route(
            "/webhooks/didit",
            post(webhook::didit_webhook)
                .layer(axum::extract::DefaultBodyLimit::max(WEBHOOK_BODY_LIMIT)),
        )
        .route("/v1/verifications", post(intake::start))
        .route("/v1/verifications/{request_id}", get(intake::status))
        .route("/v1/subjects/erase", post(intake::erase))
        .route("/v1/openapi.json", get(intake::openapi))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// The internal routes: `/metrics` and the operator console under `/console/` (on
/// `http.internal_port` when set, else merged into the public port).
pub fn internal_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state.clone())
        .merge(crate::console::router(state))
}

async fn metrics(
    State(state): State<AppState>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    state.refresh_shared_gauges().await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
}

/// Liveness: the workers are running.
async fn healthz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.workers_alive.load(Ordering::SeqCst) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "workers stopped")
    }
}

/// Readiness: Redis answers and accepts writes, and the workers run. A Redis that refuses
/// writes (out of memory under `noeviction`, a read-only replica) answers PING but fails
/// every intake: unready too. An account pause is not unreadiness: webhooks must keep
/// arriving.
async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if !state.workers_alive.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "workers stopped");
    }
    match state.store.writable().await {
        Ok(()) => (StatusCode::OK, "ready"),
        Err(e) if e.is_unreachable() => (StatusCode::SERVICE_UNAVAILABLE, "redis unreachable"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "redis refuses writes"),
    }
}
