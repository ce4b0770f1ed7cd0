//! The HTTP side of the API (`[api] http_listen`): the live cluster page
//! (`page`, updated over Server-Sent Events at `/api/events`),
//! `/api/status` (the `vigil status --json` document), `/api/packages/<name>/why`
//! (`vigil why --json`), the same JSON as `vigil resls --json` and
//! `vigil monitor list --json`, `/healthz`, and Prometheus metrics at
//! `/metrics`.
//!
//! The same task follows the cluster for the alert hooks
//! ([`crate::hooks`]): one source of events for the page and the hooks.
//!
//! Read-only by design: every operation that changes state goes through the
//! Unix socket, whose 0600 mode is the access control. Like the socket
//! server, it answers nothing itself: requests go to the main loop as
//! [`ApiCall`]s.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response as HttpResponse};
use axum::routing::get;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::api::{ApiCall, MonitorRow, Request, ReslsOutput};
use crate::hooks::Hooks;
use crate::views::{ClusterView, HealthOutput, StatusOutput, WhyOutput};
use crate::watch::Watch;

/// How often the HTTP side asks the main loop for the cluster's status,
/// to see events and push page updates, when no store change nudges it.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);
/// The shortest time between two of those polls.
const NUDGE_GAP: Duration = Duration::from_millis(50);

#[derive(Clone)]
struct Calls(mpsc::UnboundedSender<ApiCall>);

impl Calls {
    async fn call(&self, request: Request) -> Result<serde_json::Value, String> {
        let (reply, answer) = oneshot::channel();
        self.0
            .send(ApiCall { request, reply })
            .map_err(|_| "daemon is shutting down".to_owned())?;
        let response = answer
            .await
            .map_err(|_| "daemon dropped the request".to_owned())?;
        match (response.ok, response.result) {
            (true, Some(v)) => Ok(v),
            (true, None) => Ok(serde_json::Value::Null),
            (false, _) => Err(response.error.unwrap_or_default()),
        }
    }

    async fn resls(&self, path: &str) -> Result<ReslsOutput, String> {
        let v = self
            .call(Request::Resls {
                path: path.to_owned(),
            })
            .await?;
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    async fn monitors(&self) -> Result<Vec<MonitorRow>, String> {
        self.typed(Request::Monitors).await
    }

    async fn status(&self) -> Result<StatusOutput, String> {
        self.typed(Request::Status).await
    }

    async fn why(&self, package: &str) -> Result<WhyOutput, String> {
        self.typed(Request::Why {
            package: package.to_owned(),
        })
        .await
    }

    async fn health(&self) -> Result<HealthOutput, String> {
        self.typed(Request::Health).await
    }

    /// One round of requests for everything the page and metrics show.
    async fn view(&self, events: Vec<crate::views::ClusterEvent>) -> Result<ClusterView, String> {
        self.view_with(self.status().await?, events).await
    }

    /// [`Calls::view`] around a status already fetched.
    async fn view_with(
        &self,
        status: StatusOutput,
        events: Vec<crate::views::ClusterEvent>,
    ) -> Result<ClusterView, String> {
        Ok(ClusterView {
            status,
            resources: self.resls("/").await?,
            monitors: self.monitors().await?,
            health: self.health().await?,
            events,
        })
    }

    async fn typed<T: serde::de::DeserializeOwned>(&self, request: Request) -> Result<T, String> {
        let v = self.call(request).await?;
        serde_json::from_value(v).map_err(|e| e.to_string())
    }
}

/// What the HTTP side keeps between requests.
struct Shared {
    watch: Watch,
    /// The last `#cluster` fragment pushed to the page's clients.
    fragment: Option<Arc<String>>,
    updates: tokio::sync::broadcast::Sender<Arc<String>>,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            watch: Watch::default(),
            fragment: None,
            // Each fragment is the whole state: a short queue is enough.
            updates: tokio::sync::broadcast::channel(4).0,
        }
    }
}

#[derive(Clone)]
struct App {
    calls: Calls,
    shared: Arc<Mutex<Shared>>,
}

impl App {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        // A panic while holding it leaves plain data behind: keep serving.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Polls the main loop's status for ever, feeding [`Watch`] (events and
/// failover counts) and giving each event to the hooks (which only queue
/// it); ends when the daemon stops.
async fn watch(app: App, hooks: Hooks, nudge: Arc<Notify>) {
    loop {
        // A store change nudges at once (so a short-lived state such as
        // `halting` is seen), but polls stay NUDGE_GAP apart so a burst of
        // changes costs the main loop a few status requests, not one per
        // change; the interval catches the rest.
        let polled = tokio::time::Instant::now();
        let _ = tokio::time::timeout(WATCH_INTERVAL, nudge.notified()).await;
        tokio::time::sleep_until(polled + NUDGE_GAP).await;
        if app.calls.0.is_closed() {
            break;
        }
        // A busy or failing main loop is skipped this round.
        let Ok(status) = app.calls.status().await else {
            continue;
        };
        let (events, watched) = {
            let mut shared = app.lock();
            for e in shared.watch.observe(&status, vigil_sdk::now_ms()) {
                tracing::info!(seq = e.seq, kind = %e.kind, subject = %e.subject, text = %e.text, "cluster event");
                hooks.send(&e);
            }
            (shared.watch.events(), shared.updates.receiver_count() > 0)
        };
        // Rendering needs the resources and monitors too: only for pages
        // that are open.
        if !watched {
            continue;
        }
        let Ok(view) = app.calls.view_with(status, events).await else {
            continue;
        };
        let fragment = Arc::new(crate::page::cluster(&view).into_string());
        let mut shared = app.lock();
        if shared.fragment.as_deref() != Some(&*fragment) {
            shared.fragment = Some(Arc::clone(&fragment));
            let _ = shared.updates.send(fragment);
        }
    }
}

fn failure(message: String) -> HttpResponse {
    (StatusCode::SERVICE_UNAVAILABLE, message).into_response()
}

#[derive(serde::Deserialize)]
struct PathQuery {
    path: Option<String>,
}

async fn resources(State(app): State<App>, Query(q): Query<PathQuery>) -> HttpResponse {
    match app.calls.resls(q.path.as_deref().unwrap_or("/")).await {
        Ok(out) => axum::Json(out).into_response(),
        Err(e) => failure(e),
    }
}

async fn monitors(State(app): State<App>) -> HttpResponse {
    match app.calls.monitors().await {
        Ok(rows) => axum::Json(serde_json::json!({ "monitors": rows })).into_response(),
        Err(e) => failure(e),
    }
}

async fn status(State(app): State<App>) -> HttpResponse {
    match app.calls.status().await {
        Ok(out) => axum::Json(out).into_response(),
        Err(e) => failure(e),
    }
}

async fn why(State(app): State<App>, Path(package): Path<String>) -> HttpResponse {
    match app.calls.why(&package).await {
        Ok(out) => axum::Json(out).into_response(),
        // The host answered: the package is unknown (or its file broken).
        Err(e) => (StatusCode::NOT_FOUND, e).into_response(),
    }
}

/// 200 when the host's main loop answers and it vouches for its lease; 503
/// otherwise (a load balancer or systemd-style probe reads only the code).
async fn healthz(State(app): State<App>) -> HttpResponse {
    match app.calls.health().await {
        Ok(h) if h.healthy => axum::Json(h).into_response(),
        Ok(h) => (StatusCode::SERVICE_UNAVAILABLE, axum::Json(h)).into_response(),
        Err(e) => failure(e),
    }
}

async fn metrics(State(app): State<App>) -> HttpResponse {
    match app.calls.view(Vec::new()).await {
        Ok(view) => {
            let failovers = app.lock().watch.failovers().clone();
            (
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                crate::metrics::render(&view, &failovers),
            )
                .into_response()
        }
        Err(e) => failure(e),
    }
}

async fn page(State(app): State<App>) -> HttpResponse {
    let events = app.lock().watch.events();
    match app.calls.view(events).await {
        Ok(view) => Html(crate::page::page(&view).into_string()).into_response(),
        Err(e) => failure(e),
    }
}

/// Server-Sent Events: the current `#cluster` fragment at once, then each
/// new one the watcher renders (at most one per [`WATCH_INTERVAL`]).
async fn events(State(app): State<App>) -> HttpResponse {
    use tokio_stream::StreamExt as _;
    let (current, updates) = {
        let shared = app.lock();
        (shared.fragment.clone(), shared.updates.subscribe())
    };
    let first = tokio_stream::iter(current.map(Ok));
    // A client too slow for the channel skips to the next fragment: each
    // one is the whole state.
    let rest = tokio_stream::wrappers::BroadcastStream::new(updates)
        .filter_map(|update| update.ok().map(Ok));
    let stream = first
        .chain(rest)
        .map(|fragment: Result<Arc<String>, Infallible>| {
            fragment.map(|f| Event::default().event("cluster").data(f.as_str()))
        });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Follows the cluster (events for the page, `/metrics` and `hooks`) and
/// serves the HTTP API on `listener`, if there is one, until the task is
/// dropped. The daemon runs it when `http_listen` is set or a hook is
/// configured, and notifies `nudge` on every store change.
pub async fn serve(
    listener: Option<tokio::net::TcpListener>,
    calls: mpsc::UnboundedSender<ApiCall>,
    hooks: Hooks,
    nudge: Arc<Notify>,
) {
    let app = App {
        calls: Calls(calls),
        shared: Arc::default(),
    };
    let mut watcher = tokio::spawn(watch(app.clone(), hooks, nudge));
    let Some(listener) = listener else {
        let _ = (&mut watcher).await;
        return;
    };
    let router = Router::new()
        .route("/", get(page))
        .route("/api/status", get(status))
        .route("/api/packages/{package}/why", get(why))
        .route("/healthz", get(healthz))
        .route("/api/events", get(events))
        .route("/api/resources", get(resources))
        .route("/api/monitors", get(monitors))
        .route("/metrics", get(metrics))
        .with_state(app);
    if let Err(e) = axum::serve(listener, router).await {
        tracing::error!(error = %e, "http api stopped");
    }
    watcher.abort();
}
