//! Dylib monitors in a process of their own (`isolation = "process"`).
//!
//! The host runs `vigil monitor serve-dylib --plugin PATH --timeout-ms N` as
//! a streaming exec monitor: the child loads the plugin with every check of
//! [`super::dylib`], runs it on a worker thread exactly as the host would,
//! and speaks the exec line protocol on stdout (hello, then samples after
//! every poll and every push, `error` for a failed poll). A plugin that
//! crashes takes only this child down; the host sees the stream end, makes
//! the monitor's resources unknown and restarts it with backoff like any
//! streaming monitor. A poll that hangs is reported, and the child exits so
//! that the restart gets a fresh thread instead of a stuck one.
//!
//! This module is only the child's side; the host's side is the ordinary
//! stream runner in [`super`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vigil_sdk::proto::{self, CAP_STREAM, MonitorMessage, PROTOCOL_VERSION};
use vigil_sdk::wire::WireSample;
use vigil_sdk::{Sample, abi};

use super::dylib::{DylibWorker, Plugin};

/// Exit code when the plugin's poll hung: the host restarts the child.
pub const EXIT_HUNG: i32 = 3;

/// The child's command line for `plugin`, run by `vigil` at `exe`.
pub fn command(exe: &Path, plugin: &Path, timeout: Duration) -> Vec<String> {
    vec![
        exe.display().to_string(),
        "monitor".to_owned(),
        "serve-dylib".to_owned(),
        "--plugin".to_owned(),
        plugin.display().to_string(),
        "--timeout-ms".to_owned(),
        timeout.as_millis().to_string(),
    ]
}

/// Writes protocol lines to stdout from the poll loop and push threads alike.
#[derive(Clone)]
struct Out(Arc<Mutex<std::io::Stdout>>);

impl Out {
    /// False once the host has gone (stdout closed).
    fn send(&self, message: &MonitorMessage) -> bool {
        let line = proto::encode_line(message);
        let mut out = self.0.lock().unwrap_or_else(|p| p.into_inner());
        out.write_all(line.as_bytes())
            .and_then(|()| out.flush())
            .is_ok()
    }

    fn samples(&self, samples: &[Sample]) -> bool {
        self.send(&MonitorMessage::Samples {
            samples: samples.iter().map(WireSample::from).collect(),
        })
    }

    fn error(&self, message: String) -> bool {
        self.send(&MonitorMessage::Error { message })
    }
}

/// Serves the plugin at `plugin` on stdin/stdout until the host goes away;
/// returns the exit code.
pub fn serve(plugin: PathBuf, timeout: Duration) -> i32 {
    let out = Out(Arc::new(Mutex::new(std::io::stdout())));
    let fail = |message: String| {
        out.error(message);
        1
    };
    let hello = match proto::read_host_hello(&mut std::io::stdin().lock(), "child") {
        Ok(hello) => hello,
        Err(message) => return fail(message),
    };
    let loaded = match Plugin::load(&plugin) {
        Ok(p) => p,
        Err(e) => return fail(e.to_string()),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(format!("starting the child's runtime: {e}")),
    };
    let push: abi::PushHandler = {
        let out = out.clone();
        Box::new(move |batch: Result<Vec<Sample>, abi::AbiError>| {
            match batch {
                Ok(samples) => out.samples(&samples),
                Err(e) => out.error(e.to_string()),
            };
        })
    };
    let params = if hello.params.is_null() {
        serde_json::Value::Object(Default::default())
    } else {
        hello.params.clone()
    };
    runtime.block_on(async {
        let started =
            match DylibWorker::start(&hello.monitor, loaded, &params, timeout, Some(push)).await {
                Ok(s) => s,
                Err(e) => return fail(format!("plugin {}: {e}", plugin.display())),
            };
        let hello_line = MonitorMessage::Hello {
            protocol: PROTOCOL_VERSION,
            publishes: started.declared.iter().map(|p| p.to_string()).collect(),
            capabilities: vec![CAP_STREAM.to_owned()],
        };
        if !out.send(&hello_line) {
            return 0;
        }
        let interval = Duration::from_millis(hello.interval_ms);
        // Zero polls back to back (the dispatch benchmark); a tokio interval
        // cannot tick at zero.
        let mut ticks = (!interval.is_zero()).then(|| {
            let mut t = tokio::time::interval(interval);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        loop {
            if let Some(ticks) = &mut ticks {
                ticks.tick().await;
            }
            let sent = match started.worker.poll(timeout).await {
                Ok(samples) => out.samples(&samples),
                Err(reason) => {
                    let sent = out.error(reason);
                    if started.worker.is_busy() {
                        // The thread is stuck in the plugin: start over in
                        // a fresh process rather than keep a dead thread.
                        return EXIT_HUNG;
                    }
                    sent
                }
            };
            if !sent {
                return 0;
            }
        }
    })
}
