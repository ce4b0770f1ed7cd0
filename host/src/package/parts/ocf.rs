//! `[[agent]]`: an OCF resource agent (`$OCF_ROOT/resource.d/<provider>/<type>`,
//! Debian's resource-agents) run as a part: `start`, `stop` and `monitor`
//! with `OCF_ROOT`, `OCF_RESOURCE_INSTANCE`, `OCF_RESOURCE_TYPE`,
//! `OCF_RESOURCE_PROVIDER` and one `OCF_RESKEY_<key>` per parameter.
//! Timeouts come from the package when given, else from the agent's
//! `meta-data` (`<action name="start" timeout="20s"/>`), else 20 s.
//!
//! [`AgentMonitor`] is the monitor behind `/package/<pkg>/agent/<name>/status`:
//! the host runs it as an exec monitor (`vigil monitor serve-ocf`, streaming)
//! for every package with an agent that has `monitor_interval_seconds`. On
//! the node where the run record lists the agent as started it runs
//! `monitor`: `up` (0), `down` (7, not running) or `failed` (any other
//! code, with its OCF meaning); elsewhere the value is `stopped`, which says
//! nothing about the package (the implied requirement is judged only after
//! the start, where the package runs).
//!
//! It does not implement promotable (master/slave) or clone semantics, nor
//! `reload`/`migrate_*`.

use std::path::PathBuf;
use std::time::Duration;

use super::{AgentPart, PartContext, parse_agent_name, tool};

/// OCF exit codes (OCF resource agent API).
pub const OCF_SUCCESS: i32 = 0;
pub const OCF_NOT_RUNNING: i32 = 7;

/// What an OCF exit code means.
pub fn meaning(code: i32) -> &'static str {
    match code {
        0 => "success",
        1 => "generic error",
        2 => "invalid argument",
        3 => "unimplemented feature",
        4 => "insufficient privileges",
        5 => "not installed",
        6 => "not configured",
        7 => "not running",
        8 => "running as master",
        9 => "failed as master",
        _ => "unknown exit code",
    }
}

/// Used when neither the package nor the meta-data gives a timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `meta-data` may take.
const META_DATA_TIMEOUT: Duration = Duration::from_secs(10);

/// The agent's executable.
pub fn agent_path(ocf_root: &std::path::Path, agent: &str) -> Option<PathBuf> {
    let (provider, kind) = super::parse_agent_name(agent)?;
    Some(ocf_root.join("resource.d").join(provider).join(kind))
}

fn environment(agent: &AgentPart, ctx: &PartContext, timeout: Duration) -> Vec<(String, String)> {
    let (provider, kind) = agent.provider_and_type().unwrap_or(("", ""));
    let mut env = vec![
        ("OCF_ROOT".to_owned(), ctx.ocf_root.display().to_string()),
        ("OCF_RESOURCE_INSTANCE".to_owned(), agent.name.clone()),
        ("OCF_RESOURCE_TYPE".to_owned(), kind.to_owned()),
        ("OCF_RESOURCE_PROVIDER".to_owned(), provider.to_owned()),
        (
            "OCF_RESKEY_CRM_meta_timeout".to_owned(),
            timeout.as_millis().to_string(),
        ),
        ("VIGIL_PACKAGE".to_owned(), ctx.package.clone()),
    ];
    env.extend(
        agent
            .params
            .iter()
            .map(|(k, v)| (format!("OCF_RESKEY_{k}"), v.clone())),
    );
    env
}

/// The timeout of `action` from meta-data XML, if it gives one.
pub fn meta_data_timeout(xml: &str, action: &str) -> Option<Duration> {
    let needle = format!("name=\"{action}\"");
    xml.split("<action")
        .skip(1)
        .filter(|a| a.contains(&needle))
        .find_map(|a| {
            let end = a.find('>').unwrap_or(a.len());
            let attrs = &a[..end];
            let at = attrs.find("timeout=\"")? + "timeout=\"".len();
            let value = &attrs[at..at + attrs[at..].find('"')?];
            parse_ocf_duration(value)
        })
}

/// `20s`, `2m`, `500ms`, `20` (seconds).
fn parse_ocf_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, ""), |i| text.split_at(i));
    let n: u64 = number.parse().ok()?;
    match unit.trim() {
        "" | "s" | "sec" => Some(Duration::from_secs(n)),
        "ms" | "msec" => Some(Duration::from_millis(n)),
        "m" | "min" => Some(Duration::from_secs(n * 60)),
        "h" | "hr" => Some(Duration::from_secs(n * 3600)),
        _ => None,
    }
}

/// The agent's `meta-data` XML.
pub fn meta_data(ocf_root: &std::path::Path, agent: &str) -> Result<String, String> {
    let path = agent_path(ocf_root, agent)
        .ok_or_else(|| format!("agent {agent:?} is not of the form ocf:<provider>:<type>"))?;
    let program = path.to_str().ok_or("agent path is not UTF-8")?;
    let env = vec![("OCF_ROOT".to_owned(), ocf_root.display().to_string())];
    let out = tool(program, &["meta-data"], &env, META_DATA_TIMEOUT)?;
    if out.code == Some(OCF_SUCCESS) {
        Ok(out.stdout)
    } else {
        Err(out.describe(&format!("{program} meta-data")))
    }
}

fn timeout_for(agent: &AgentPart, ctx: &PartContext, action: &str) -> Duration {
    if let Some(ms) = agent.timeouts_ms.get(action) {
        return Duration::from_millis(*ms);
    }
    meta_data(&ctx.ocf_root, &agent.agent)
        .ok()
        .and_then(|xml| meta_data_timeout(&xml, action))
        .unwrap_or(DEFAULT_TIMEOUT)
}

/// Runs `action`; its OCF exit code (`None`: killed or timed out) and the
/// last line it printed.
pub fn action(
    agent: &AgentPart,
    ctx: &PartContext,
    action: &str,
) -> Result<(Option<i32>, String), String> {
    let path = agent_path(&ctx.ocf_root, &agent.agent).ok_or_else(|| {
        format!(
            "agent {:?} is not of the form ocf:<provider>:<type>",
            agent.agent
        )
    })?;
    let program = path.to_str().ok_or("agent path is not UTF-8")?;
    let timeout = timeout_for(agent, ctx, action);
    let out = tool(
        program,
        &[action],
        &environment(agent, ctx, timeout),
        timeout,
    )?;
    Ok((out.code, out.last_line()))
}

fn describe(action: &str, code: Option<i32>, line: &str) -> String {
    let how = match code {
        Some(c) => format!("{action} returned {c} ({})", meaning(c)),
        None => format!("{action} timed out or was killed"),
    };
    if line.is_empty() {
        how
    } else {
        format!("{how}: {line}")
    }
}

pub fn start(agent: &AgentPart, ctx: &PartContext) -> Result<(), String> {
    match action(agent, ctx, "start")? {
        (Some(OCF_SUCCESS), _) => Ok(()),
        (code, line) => Err(describe("start", code, &line)),
    }
}

pub fn stop(agent: &AgentPart, ctx: &PartContext) -> Result<(), String> {
    match action(agent, ctx, "stop")? {
        // Stopping what does not run is a successful stop.
        (Some(OCF_SUCCESS | OCF_NOT_RUNNING), _) => Ok(()),
        (code, line) => Err(describe("stop", code, &line)),
    }
}

/// `monitor`'s exit code; `Err` when it could not be run or timed out.
pub fn monitor(agent: &AgentPart, ctx: &PartContext) -> Result<i32, String> {
    match action(agent, ctx, "monitor")? {
        (Some(code), _) => Ok(code),
        (None, line) => Err(describe("monitor", None, &line)),
    }
}

/// One `<parameter>` of an agent's meta-data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentParameter {
    pub name: String,
    pub required: bool,
    pub shortdesc: String,
    pub default: Option<String>,
}

/// The value of attribute `key` in the tag text `attrs`.
fn attribute(attrs: &str, key: &str) -> Option<String> {
    let needle = format!("{key}=\"");
    let at = attrs.find(&needle)? + needle.len();
    let end = attrs[at..].find('"')?;
    Some(unescape(&attrs[at..at + end]))
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// The `<parameter>`s of meta-data XML, in order. A plain scan, not an XML
/// parser: meta-data is the agents' fixed, simple shape.
pub fn meta_data_parameters(xml: &str) -> Vec<AgentParameter> {
    let Some(start) = xml.find("<parameters>") else {
        return Vec::new();
    };
    let end = xml[start..]
        .find("</parameters>")
        .map_or(xml.len(), |e| start + e);
    xml[start..end]
        .split("<parameter ")
        .skip(1)
        .filter_map(|block| {
            let tag_end = block.find('>')?;
            let attrs = &block[..tag_end];
            let name = attribute(attrs, "name")?;
            let shortdesc = block
                .find("<shortdesc")
                .and_then(|s| {
                    let open = s + block[s..].find('>')? + 1;
                    let close = open + block[open..].find("</shortdesc>")?;
                    Some(unescape(block[open..close].trim()))
                })
                .unwrap_or_default();
            let default = block
                .find("<content")
                .and_then(|c| attribute(&block[c..c + block[c..].find('>')?], "default"));
            Some(AgentParameter {
                required: attribute(attrs, "required").as_deref() == Some("1"),
                name,
                shortdesc: shortdesc.split_whitespace().collect::<Vec<_>>().join(" "),
                default,
            })
        })
        .collect()
}

/// A TOML value: a quoted string with `"` and `\` escaped.
fn toml_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The `[[agent]]` section `vigil template package --agent` prints: the
/// agent's parameters from its meta-data (required ones set, the others
/// commented out with their defaults) and its action timeouts.
pub fn agent_template(agent: &str, xml: &str) -> String {
    let kind = parse_agent_name(agent).map_or("agent", |(_, k)| k);
    let mut out = format!(
        "\n[[agent]]\nname = {}\nagent = {}\nmonitor_interval_seconds = 10\n",
        toml_string(&kind.to_lowercase()),
        toml_string(agent)
    );
    let timeouts: Vec<String> = ["start", "stop", "monitor"]
        .iter()
        .filter_map(|a| meta_data_timeout(xml, a).map(|t| format!("{a} {} s", t.as_secs_f64())))
        .collect();
    if !timeouts.is_empty() {
        out += &format!(
            "# Timeouts from the agent's meta-data: {}; override with start_timeout_seconds,\n# stop_timeout_seconds, monitor_timeout_seconds.\n",
            timeouts.join(", ")
        );
    }
    out += "[agent.params]\n";
    for p in meta_data_parameters(xml) {
        let value = toml_string(p.default.as_deref().unwrap_or(""));
        let line = format!("{} = {value}", p.name);
        let desc = if p.shortdesc.is_empty() {
            String::new()
        } else {
            format!("  # {}", p.shortdesc)
        };
        if p.required {
            out += &format!("{line}{desc} (required)\n");
        } else {
            out += &format!("# {line}{desc}\n");
        }
    }
    out
}

/// `/package/<pkg>/agent/<name>/status`.
pub fn status_resource(package: &str, agent: &str) -> String {
    format!("/package/{package}/agent/{agent}/status")
}

/// The words `/package/<pkg>/agent/<name>/status` takes.
pub const UP: &str = "up";
pub const DOWN: &str = "down";
pub const FAILED: &str = "failed";
/// Not started on this node: nothing to judge.
pub const STOPPED: &str = "stopped";

/// The params of [`AgentMonitor`], as the host writes them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentMonitorParams {
    pub package: String,
    /// Where the package's run record is (`<records_dir>/<package>.json`).
    pub records_dir: PathBuf,
    pub ocf_root: PathBuf,
    pub agents: Vec<AgentPart>,
}

/// The monitor of a package's OCF agents (see the module docs).
#[derive(Debug)]
pub struct AgentMonitor {
    params: AgentMonitorParams,
}

impl AgentMonitor {
    /// Whether the run record here lists `agent` as started.
    fn started_here(&self, agent: &AgentPart) -> bool {
        let path =
            crate::package::agent::record_path(&self.params.records_dir, &self.params.package);
        crate::package::lifecycle::RunRecord::load(&path).is_ok_and(|r| {
            r.parts
                .iter()
                .any(|p| matches!(p, super::Part::Agent(a) if a.name == agent.name))
        })
    }

    /// `None` for a name that is no resource name (config checks prevent it).
    fn sample(&self, agent: &AgentPart) -> Option<vigil_sdk::Sample> {
        let name = vigil_sdk::ResourceName::new(status_resource(&self.params.package, &agent.name))
            .ok()?;
        if !self.started_here(agent) {
            return Some(vigil_sdk::Sample::text(name, STOPPED));
        }
        let ctx = PartContext {
            node: String::new(),
            package: self.params.package.clone(),
            stop_grace: Duration::ZERO,
            ocf_root: self.params.ocf_root.clone(),
            live_nodes: None,
        };
        Some(match monitor(agent, &ctx) {
            Ok(OCF_SUCCESS) => vigil_sdk::Sample::up(name),
            Ok(OCF_NOT_RUNNING) => {
                vigil_sdk::Sample::down(name, "monitor returned 7 (not running)")
            }
            Ok(code) => vigil_sdk::Sample::text(name, FAILED)
                .with_reason(format!("monitor returned {code} ({})", meaning(code))),
            Err(e) => vigil_sdk::Sample::unknown(name, e),
        })
    }
}

impl vigil_sdk::Monitor for AgentMonitor {
    fn configure(params: serde_json::Value) -> Result<Self, vigil_sdk::MonitorError> {
        let params: AgentMonitorParams = serde_json::from_value(params)
            .map_err(|e| vigil_sdk::MonitorError::new(format!("params: {e}")))?;
        Ok(Self { params })
    }

    fn declare(&self) -> Vec<vigil_sdk::ResourcePattern> {
        self.params
            .agents
            .iter()
            .filter_map(|a| {
                vigil_sdk::ResourcePattern::new(status_resource(&self.params.package, &a.name)).ok()
            })
            .collect()
    }

    fn poll(
        &mut self,
        _deadline: std::time::Instant,
    ) -> Result<Vec<vigil_sdk::Sample>, vigil_sdk::MonitorError> {
        Ok(self
            .params
            .agents
            .iter()
            .filter_map(|a| self.sample(a))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_from_meta_data() {
        let xml = r#"<actions>
<action name="start"        timeout="20s" />
<action name="stop"         timeout="2m" />
<action name="monitor"      timeout="500ms" interval="10s" depth="0"/>
<action name="meta-data"    timeout="5" />
</actions>"#;
        let check = |action: &str, expect: Option<Duration>| {
            assert_eq!(meta_data_timeout(xml, action), expect, "{action}");
        };
        check("start", Some(Duration::from_secs(20)));
        check("stop", Some(Duration::from_secs(120)));
        check("monitor", Some(Duration::from_millis(500)));
        check("meta-data", Some(Duration::from_secs(5)));
        check("reload", None);
    }

    #[test]
    fn template_lists_parameters_from_meta_data() {
        let xml = r#"<resource-agent name="IPaddr2">
<parameters>
<parameter name="ip" unique="1" required="1">
<longdesc lang="en">The IPv4 address.</longdesc>
<shortdesc lang="en">IPv4 or IPv6
 address</shortdesc>
<content type="string" default="" />
</parameter>
<parameter name="cidr_netmask">
<shortdesc lang="en">CIDR netmask &amp; more</shortdesc>
<content type="string" default="a&quot;b"/>
</parameter>
</parameters>
<actions>
<action name="start" timeout="20s" />
<action name="monitor" timeout="20s" interval="10s" />
</actions>
</resource-agent>"#;
        expect_test::expect![[r#"

            [[agent]]
            name = "ipaddr2"
            agent = "ocf:heartbeat:IPaddr2"
            monitor_interval_seconds = 10
            # Timeouts from the agent's meta-data: start 20 s, monitor 20 s; override with start_timeout_seconds,
            # stop_timeout_seconds, monitor_timeout_seconds.
            [agent.params]
            ip = ""  # IPv4 or IPv6 address (required)
            # cidr_netmask = "a\"b"  # CIDR netmask & more
        "#]]
        .assert_eq(&agent_template("ocf:heartbeat:IPaddr2", xml));
    }

    #[test]
    fn agent_names() {
        let check = |agent: &str, expect: Option<(&str, &str)>| {
            assert_eq!(super::super::parse_agent_name(agent), expect, "{agent}");
        };
        check("ocf:heartbeat:Dummy", Some(("heartbeat", "Dummy")));
        check("ocf:heartbeat", None);
        check("lsb:apache", None);
        check("ocf:..:x", None);
        check("ocf:a/b:x", None);
    }
}
