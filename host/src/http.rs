//! The HTTP side of the API (`[api] http_listen`): a status page,
//! `/api/status` (the `vigil status --json` document), `/api/packages/<name>/why`
//! (`vigil why --json`), the same JSON as `vigil resls --json` and
//! `vigil monitor list --json`, `/healthz`, and Prometheus metrics at
//! `/metrics`.
//!
//! Read-only by design: every operation that changes state goes through the
//! Unix socket, whose 0600 mode is the access control. Like the socket
//! server, it answers nothing itself: requests go to the main loop as
//! [`ApiCall`]s.

use std::fmt::Write as _;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response as HttpResponse};
use axum::routing::get;
use tokio::sync::{mpsc, oneshot};

use crate::api::{ApiCall, MonitorRow, Request, ReslsOutput};
use crate::views::{HealthOutput, StatusOutput, WhyOutput};

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

    async fn typed<T: serde::de::DeserializeOwned>(&self, request: Request) -> Result<T, String> {
        let v = self.call(request).await?;
        serde_json::from_value(v).map_err(|e| e.to_string())
    }
}

fn failure(message: String) -> HttpResponse {
    (StatusCode::SERVICE_UNAVAILABLE, message).into_response()
}

#[derive(serde::Deserialize)]
struct PathQuery {
    path: Option<String>,
}

async fn resources(State(calls): State<Calls>, Query(q): Query<PathQuery>) -> HttpResponse {
    match calls.resls(q.path.as_deref().unwrap_or("/")).await {
        Ok(out) => axum::Json(out).into_response(),
        Err(e) => failure(e),
    }
}

async fn monitors(State(calls): State<Calls>) -> HttpResponse {
    match calls.monitors().await {
        Ok(rows) => axum::Json(serde_json::json!({ "monitors": rows })).into_response(),
        Err(e) => failure(e),
    }
}

async fn status(State(calls): State<Calls>) -> HttpResponse {
    match calls.status().await {
        Ok(out) => axum::Json(out).into_response(),
        Err(e) => failure(e),
    }
}

async fn why(State(calls): State<Calls>, Path(package): Path<String>) -> HttpResponse {
    match calls.why(&package).await {
        Ok(out) => axum::Json(out).into_response(),
        // The host answered: the package is unknown (or its file broken).
        Err(e) => (StatusCode::NOT_FOUND, e).into_response(),
    }
}

/// 200 when the host's main loop answers and it vouches for its lease; 503
/// otherwise (a load balancer or systemd-style probe reads only the code).
async fn healthz(State(calls): State<Calls>) -> HttpResponse {
    match calls.health().await {
        Ok(h) if h.healthy => axum::Json(h).into_response(),
        Ok(h) => (StatusCode::SERVICE_UNAVAILABLE, axum::Json(h)).into_response(),
        Err(e) => failure(e),
    }
}

/// Escapes a Prometheus label value.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text exposition of resources and monitors.
pub fn metrics_text(resls: &ReslsOutput, monitors: &[MonitorRow]) -> String {
    let mut out = String::new();
    let node = label(&resls.node);
    out.push_str("# HELP vigil_resource_value Latest numeric value of a resource.\n# TYPE vigil_resource_value gauge\n");
    for r in &resls.resources {
        if let Some(v) = r.value.as_f64() {
            let _ = writeln!(
                out,
                "vigil_resource_value{{node=\"{node}\",resource=\"{}\",monitor=\"{}\",unit=\"{}\"}} {v}",
                label(&r.name),
                label(&r.monitor),
                label(r.unit.as_deref().unwrap_or_default())
            );
        }
    }
    out.push_str("# HELP vigil_resource_known 1 when the resource's value is known, 0 when unknown.\n# TYPE vigil_resource_known gauge\n");
    for r in &resls.resources {
        let _ = writeln!(
            out,
            "vigil_resource_known{{node=\"{node}\",resource=\"{}\",monitor=\"{}\"}} {}",
            label(&r.name),
            label(&r.monitor),
            u8::from(r.state == "known")
        );
    }
    out.push_str("# HELP vigil_monitor_ok 1 when the monitor's last report was good.\n# TYPE vigil_monitor_ok gauge\n");
    for m in monitors {
        let _ = writeln!(
            out,
            "vigil_monitor_ok{{node=\"{node}\",monitor=\"{}\",type=\"{}\"}} {}",
            label(&m.name),
            label(&m.kind),
            u8::from(m.state == "ok")
        );
    }
    out.push_str("# HELP vigil_monitor_samples_total Samples recorded from the monitor.\n# TYPE vigil_monitor_samples_total counter\n");
    for m in monitors {
        let _ = writeln!(
            out,
            "vigil_monitor_samples_total{{node=\"{node}\",monitor=\"{}\"}} {}",
            label(&m.name),
            m.samples_received
        );
    }
    out
}

async fn metrics(State(calls): State<Calls>) -> HttpResponse {
    match (calls.resls("/").await, calls.monitors().await) {
        (Ok(resls), Ok(monitors)) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            metrics_text(&resls, &monitors),
        )
            .into_response(),
        (Err(e), _) | (_, Err(e)) => failure(e),
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn page(State(calls): State<Calls>) -> HttpResponse {
    let (resls, monitors) = match (calls.resls("/").await, calls.monitors().await) {
        (Ok(r), Ok(m)) => (r, m),
        (Err(e), _) | (_, Err(e)) => return failure(e),
    };
    let mut html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
         <title>vigil {node}</title><style>body{{font-family:sans-serif}}table{{border-collapse:collapse}}\
         td,th{{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left}}.unknown{{color:#b00}}</style></head>\
         <body><h1>vigil — node {node}</h1><h2>Monitors</h2><table><tr><th>name</th><th>type</th><th>state</th><th>samples</th><th>reason</th></tr>",
        node = html_escape(&resls.node)
    );
    for m in &monitors {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            html_escape(&m.name),
            html_escape(&m.kind),
            html_escape(&m.state),
            m.samples_received,
            html_escape(m.reason.as_deref().unwrap_or_default())
        );
    }
    html.push_str("</table><h2>Resources</h2><table><tr><th>name</th><th>value</th><th>state</th><th>age</th><th>monitor</th><th>reason</th></tr>");
    for r in &resls.resources {
        let value = match &r.value {
            serde_json::Value::Null => "-".to_owned(),
            serde_json::Value::String(s) => s.clone(),
            v => format!("{v}{}", r.unit.as_deref().unwrap_or_default()),
        };
        let _ = write!(
            html,
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            html_escape(&r.state),
            html_escape(&r.name),
            html_escape(&value),
            html_escape(&r.state),
            r.age_seconds.map_or("-".to_owned(), |a| format!("{a:.1}s")),
            html_escape(&r.monitor),
            html_escape(r.reason.as_deref().unwrap_or_default())
        );
    }
    html.push_str("</table></body></html>");
    Html(html).into_response()
}

/// Serves the HTTP API on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, calls: mpsc::UnboundedSender<ApiCall>) {
    let app = Router::new()
        .route("/", get(page))
        .route("/api/status", get(status))
        .route("/api/packages/{package}/why", get(why))
        .route("/healthz", get(healthz))
        .route("/api/resources", get(resources))
        .route("/api/monitors", get(monitors))
        .route("/metrics", get(metrics))
        .with_state(Calls(calls));
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "http api stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ResourceRow;

    #[test]
    fn metrics_are_prometheus_text() {
        let resls = ReslsOutput {
            node: "node1".into(),
            path: "/".into(),
            resources: vec![
                ResourceRow {
                    name: "/fs/a\"b/used_percent".into(),
                    value: serde_json::json!(42.5),
                    unit: Some("%".into()),
                    state: "known".into(),
                    reason: None,
                    monitor: "fs".into(),
                    updated: None,
                    age_seconds: None,
                    used_by: vec![],
                },
                ResourceRow {
                    name: "/net/interfaces/eth0/status".into(),
                    value: serde_json::Value::Null,
                    unit: None,
                    state: "unknown".into(),
                    reason: Some("timed out".into()),
                    monitor: "lan".into(),
                    updated: None,
                    age_seconds: None,
                    used_by: vec![],
                },
            ],
            classes: vec![],
            declared: vec![],
        };
        let monitors = vec![MonitorRow {
            name: "fs".into(),
            kind: "dylib".into(),
            state: "ok".into(),
            reason: None,
            declares: vec![],
            samples_received: 7,
            last_report: None,
        }];
        expect_test::expect![[r#"
            # HELP vigil_resource_value Latest numeric value of a resource.
            # TYPE vigil_resource_value gauge
            vigil_resource_value{node="node1",resource="/fs/a\"b/used_percent",monitor="fs",unit="%"} 42.5
            # HELP vigil_resource_known 1 when the resource's value is known, 0 when unknown.
            # TYPE vigil_resource_known gauge
            vigil_resource_known{node="node1",resource="/fs/a\"b/used_percent",monitor="fs"} 1
            vigil_resource_known{node="node1",resource="/net/interfaces/eth0/status",monitor="lan"} 0
            # HELP vigil_monitor_ok 1 when the monitor's last report was good.
            # TYPE vigil_monitor_ok gauge
            vigil_monitor_ok{node="node1",monitor="fs",type="dylib"} 1
            # HELP vigil_monitor_samples_total Samples recorded from the monitor.
            # TYPE vigil_monitor_samples_total counter
            vigil_monitor_samples_total{node="node1",monitor="fs"} 7
        "#]]
        .assert_eq(&metrics_text(&resls, &monitors));
    }
}
