//! `[[agent]]`: an OCF resource agent (`$OCF_ROOT/resource.d/<provider>/<type>`,
//! Debian's resource-agents) run as a part: `start`, `stop` and `monitor`
//! with `OCF_ROOT`, `OCF_RESOURCE_INSTANCE`, `OCF_RESOURCE_TYPE`,
//! `OCF_RESOURCE_PROVIDER` and one `OCF_RESKEY_<key>` per parameter.
//! Timeouts come from the package when given, else from the agent's
//! `meta-data` (`<action name="start" timeout="20s"/>`), else 20 s.
//!
//! It does not implement promotable (master/slave) or clone semantics, nor
//! `reload`/`migrate_*`.

use std::path::PathBuf;
use std::time::Duration;

use super::{AgentPart, PartContext, tool};

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
