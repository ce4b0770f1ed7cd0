//! The cluster page at `/`: nodes × packages with state colours, where
//! each package runs, its resources with values and criteria, the services
//! (pids, restarts, fail counts) and parts up on this node, monitor
//! health, configuration errors and recent events. Rendered with maud from
//! one [`ClusterView`]; everything (style, script) is embedded, nothing is
//! loaded from elsewhere.
//!
//! Live updates: the page's small script listens on `/api/events`
//! (Server-Sent Events) and replaces the contents of `<main id="cluster">`
//! with each [`cluster`] fragment the HTTP side pushes; it never reloads.
//! This module only renders; `http` decides when.

use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::views::{ClusterView, PackageStatus};

/// A number for people: three significant digits at most, no trailing zeros.
fn number(v: f64) -> String {
    let text = if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

/// A resource value for people: `96.1 %`, `14.1 GiB`, `12 ms`, `up`, `–`.
pub fn format_value(value: &serde_json::Value, unit: Option<&str>) -> String {
    match value {
        serde_json::Value::Null => "–".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => {
            let v = n.as_f64().unwrap_or(f64::NAN);
            let (base, factor) = crate::metrics::base_unit(unit);
            match (base.as_str(), unit) {
                ("bytes", _) => {
                    let mut bytes = v * factor;
                    let mut prefix = 0;
                    const PREFIXES: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
                    while bytes.abs() >= 1024.0 && prefix + 1 < PREFIXES.len() {
                        bytes /= 1024.0;
                        prefix += 1;
                    }
                    let shown = if prefix == 0 {
                        format!("{bytes:.0}")
                    } else {
                        format!("{bytes:.1}")
                    };
                    format!("{shown} {}", PREFIXES[prefix])
                }
                ("ratio", _) => format!("{v:.1} %"),
                (_, Some(u)) if !u.is_empty() => format!("{} {u}", number(v)),
                _ => number(v),
            }
        }
        other => other.to_string(),
    }
}

/// The CSS class of a state word: its colour.
fn colour(state: &str) -> &'static str {
    match state {
        "up" | "ok" | "known" | "sure" | "none" | "running" => "good",
        "starting" | "halting" | "halted" | "pending" => "busy",
        "failed" | "unknown" | "in_doubt" | "exited" => "bad",
        _ => "idle",
    }
}

/// The package's state on `node`: its state where it runs, `failed` where
/// it failed, else nothing.
fn state_on<'a>(p: &'a PackageStatus, node: &str) -> Option<&'a str> {
    if p.running_on.iter().any(|n| n == node) {
        Some(&p.state)
    } else if p.failed_on.iter().any(|n| n == node) {
        Some("failed")
    } else {
        None
    }
}

/// What `<main id="cluster">` holds; also each live update.
pub fn cluster(view: &ClusterView) -> Markup {
    let status = &view.status;
    let values = |name: &str| {
        view.resources
            .resources
            .iter()
            .find(|r| r.name == name)
            .map(|r| format_value(&r.value, r.unit.as_deref()))
            .unwrap_or_else(|| "–".to_owned())
    };
    html! {
        p.summary {
            "cluster " b { (status.cluster) } " · seen from " b { (status.node) } " · lease "
            span class=(colour(&view.health.lease)) data-health=(view.health.lease) { (view.health.lease) }
        }
        @if !status.config_errors.is_empty() {
            section #errors {
                h2 { "Configuration errors" }
                ul { @for e in &status.config_errors { li.bad { (e.to_string()) } } }
            }
        }
        section #packages {
            h2 { "Packages" }
            div.scroll { table {
                thead { tr {
                    th { "package" } th { "state" }
                    @for n in &status.nodes {
                        th data-node=(n.name) data-state=(n.state) class=(colour(&n.state)) {
                            (n.name) br; small { (n.state) }
                        }
                    }
                    th { "switching" } th { "reason" }
                } }
                tbody { @for p in &status.packages {
                    tr data-package=(p.name) data-state=(p.state) data-running-on=(p.running_on.join(",")) {
                        th { (p.name) }
                        td class=(colour(&p.state)) { (p.state) }
                        @for n in &status.nodes {
                            @match state_on(p, &n.name) {
                                Some(s) => td class={ "cell " (colour(s)) } data-node=(n.name) { (s) },
                                None => td.cell data-node=(n.name) { "·" },
                            }
                        }
                        td { @if p.switching { "enabled" } @else { "disabled" } }
                        td.reason { (p.reason) }
                    }
                } }
            } }
        }
        section #resources {
            h2 { "Resources on " (status.node) }
            div.scroll { table {
                thead { tr { th { "package" } th { "resource" } th { "value" } th { "criterion" } th { "state" } } }
                tbody {
                    @if status.packages.iter().all(|p| p.resources.is_empty()) {
                        tr { td.idle colspan="5" { "no package requires a resource" } }
                    }
                    @for p in &status.packages { @for r in &p.resources {
                    tr data-resource=(r.name) {
                        td { (p.name) } td.name { (r.name) } td.num { (values(&r.name)) }
                        td { code { (r.criterion) } } td class=(colour(&r.state)) { (r.state) }
                    }
                } }
                }
            } }
        }
        section #services {
            h2 { "Services and parts on " (status.node) }
            div.scroll { table {
                thead { tr { th { "package" } th { "service or part" } th { "state" } th { "pid" } th { "restarts" } th { "fails" } } }
                tbody {
                    @let shown = |s: &crate::views::ServiceStatus| s.state != "stopped" || s.fail_count > 0;
                    @if status.packages.iter().all(|p| p.parts_here.is_empty() && !p.services_here.iter().any(shown)) {
                        tr { td.idle colspan="6" { "no service or part up here" } }
                    }
                    @for p in &status.packages {
                        @for s in p.services_here.iter().filter(|s| shown(s)) {
                            tr data-service=(s.name) data-package=(p.name) {
                                td { (p.name) } td.name { "service " (s.name) }
                                td class=(colour(&s.state)) { (s.state) }
                                td.num { (s.pid.map(|pid| pid.to_string()).unwrap_or_else(|| "–".to_owned())) }
                                td.num { (s.restarts) " / " (s.restart_limit.map(|n| n.to_string()).unwrap_or_else(|| "unlimited".to_owned())) }
                                td.reason { (s.fail_count) @if let Some(last) = &s.last_failure { " (last " (last) ")" } }
                            }
                        }
                        @for part in &p.parts_here {
                            tr data-part=(part.part) {
                                td { (p.name) } td.name { (part.part) } td.good { "up" }
                                td { "–" } td { "–" } td { "–" }
                            }
                        }
                    }
                }
            } }
        }
        section #monitors {
            h2 { "Monitors on " (status.node) }
            div.scroll { table {
                thead { tr { th { "monitor" } th { "type" } th { "state" } th { "samples" } th { "problem" } } }
                tbody {
                    @if view.monitors.is_empty() {
                        tr { td.idle colspan="5" { "no monitors configured" } }
                    }
                    @for m in &view.monitors {
                    tr data-monitor=(m.name) {
                        td { (m.name) } td { (m.kind) } td class=(colour(&m.state)) { (m.state) }
                        td.num { (m.samples_received) } td.reason { (m.problem().unwrap_or_default()) }
                    }
                }
                }
            } }
        }
        section #events {
            h2 { "Recent events" }
            @if view.events.is_empty() {
                p.idle { "none since this host started" }
            } @else {
                ol { @for e in &view.events {
                    li class=(e.kind.name()) { time { (e.at) } " " (e.text) }
                } }
            }
        }
    }
}

const STYLE: &str = "\
body{font:15px/1.4 system-ui,sans-serif;margin:0 auto;padding:.5em;max-width:70em;color:#222}\
h1{font-size:1.3em;margin:.2em 0}h2{font-size:1.1em;margin:1em 0 .3em}\
.scroll{overflow-x:auto}table{border-collapse:collapse;min-width:100%}\
th,td{padding:.25em .5em;border-bottom:1px solid #ddd;text-align:left;white-space:nowrap}\
td.reason,td.name{white-space:normal}td.num{text-align:right;font-variant-numeric:tabular-nums}\
.good{background:#d4f5d4;color:#135e13}.busy{background:#fff0c2;color:#7a5600}\
.bad{background:#fbd5d5;color:#8f1111}.idle{color:#777}td.cell{text-align:center}\
li.failover{font-weight:bold}time{color:#777;font-size:.9em}\
#live{font-size:.8em;padding:.1em .4em;border-radius:.3em}";

/// Replaces `#cluster` with every pushed fragment; counts updates in
/// `body[data-updates]` so a test (or a curious operator) sees them.
const SCRIPT: &str = "\
window.vigilLoad=window.vigilLoad||Math.random();\
(function(){var live=document.getElementById('live');\
var es=new EventSource('/api/events');\
es.addEventListener('cluster',function(e){\
document.getElementById('cluster').innerHTML=e.data;\
document.body.dataset.updates=(+(document.body.dataset.updates||0))+1;\
live.textContent='live';live.className='good';});\
es.onerror=function(){live.textContent='reconnecting';live.className='bad';};})();";

/// The whole page.
pub fn page(view: &ClusterView) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "vigil " (view.status.cluster) }
                style { (PreEscaped(STYLE)) }
            }
            body data-updates="0" {
                h1 { "vigil — " (view.status.cluster) " " span #live.idle { "connecting" } }
                main #cluster { (cluster(view)) }
                script { (PreEscaped(SCRIPT)) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn values_are_formatted_for_people() {
        let check = |value: serde_json::Value, unit: Option<&str>, want: &str| {
            assert_eq!(format_value(&value, unit), want, "{value} {unit:?}");
        };
        check(json!(96.10391525532768), Some("%"), "96.1 %");
        check(json!(14422.5), Some("MB"), "14.1 GiB");
        check(json!(15122563072.0), Some("B"), "14.1 GiB");
        check(json!(512), Some("B"), "512 B");
        check(json!(12.345), Some("ms"), "12.3 ms");
        check(json!(0.5), None, "0.5");
        check(json!(3.0), None, "3");
        check(json!(1234.6), Some("msgs"), "1235 msgs");
        check(json!("up"), None, "up");
        check(json!(null), Some("%"), "–");
    }
}
