//! The thread an event-driven monitor runs between [`Monitor::start`] and
//! [`Monitor::stop`], and a `poll(2)` wrapper to wait in it.
//!
//! [`EventThread::spawn`] starts a named thread running the monitor's loop
//! with a [`StopSignal`]; the loop puts the signal's descriptor in its wait
//! set (through [`StopSignal::wait`], or [`StopSignal::as_fd`] in its own
//! `poll`/`epoll`) and returns once it is signalled. [`EventThread::stop`],
//! or dropping the handle, signals and joins, so nothing is pushed after
//! the monitor's `stop` returns — which the host relies on before it
//! unloads the library.
//!
//! This module does not find events, retry, or report errors: what the loop
//! waits on and what it pushes when the wait fails stay with the monitor.
//! It is built on `poll(2)`, so it serves the few descriptors a monitor
//! watches, not thousands.
//!
//! [`Monitor::start`]: crate::Monitor::start
//! [`Monitor::stop`]: crate::Monitor::stop

use std::io::{self, PipeReader, PipeWriter};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One descriptor and the readiness to wait for on it.
#[derive(Debug, Clone, Copy)]
pub struct Watch<'fd> {
    fd: BorrowedFd<'fd>,
    events: libc::c_short,
}

impl<'fd> Watch<'fd> {
    /// Ready when there is data to read or the other end hung up (sockets,
    /// pipes, inotify, eventfd).
    pub fn readable(fd: BorrowedFd<'fd>) -> Self {
        Self {
            fd,
            events: libc::POLLIN,
        }
    }

    /// Ready on an exceptional condition (`POLLPRI`): how
    /// `/proc/self/mountinfo` and sysfs attributes announce a change, since
    /// they always read as readable.
    pub fn priority(fd: BorrowedFd<'fd>) -> Self {
        Self {
            fd,
            events: libc::POLLPRI,
        }
    }
}

/// Waits until at least one of `watches` is ready or `timeout` passes
/// (`None`: no limit); returns which ones are ready, all `false` on a
/// timeout. An interrupted wait is resumed for the time that is left.
///
/// Errors are those of `poll(2)`, plus `EBADF` for a closed descriptor
/// (which `poll` reports as ready forever instead of failing).
pub fn wait(watches: &[Watch<'_>], timeout: Option<Duration>) -> io::Result<Vec<bool>> {
    let mut fds: Vec<libc::pollfd> = watches
        .iter()
        .map(|w| libc::pollfd {
            fd: w.fd.as_raw_fd(),
            events: w.events,
            revents: 0,
        })
        .collect();
    let give_up = timeout.map(|t| Instant::now() + t);
    loop {
        let ms = match give_up {
            None => -1,
            // Rounded up so a wait never ends a little early and spins.
            Some(at) => {
                let left = at.saturating_duration_since(Instant::now());
                i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
            }
        };
        // SAFETY: `fds` is a live, exclusively borrowed array of `fds.len()`
        // pollfds whose descriptors are kept open by the borrows in `watches`.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if rc >= 0 {
            break;
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
    if fds.iter().any(|fd| fd.revents & libc::POLLNVAL != 0) {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    Ok(fds.iter().map(|fd| fd.revents != 0).collect())
}

/// The event thread's side of the stop request: readable once
/// [`EventThread::stop`] is called or the [`EventThread`] is dropped, and
/// from then on.
#[derive(Debug)]
pub struct StopSignal {
    reader: PipeReader,
}

impl StopSignal {
    /// The descriptor to include in a wait set of one's own; it reads as
    /// readable (hung up) once stop is signalled.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.reader.as_fd()
    }

    /// [`StopSignal::as_fd`] for APIs that take a raw descriptor.
    pub fn raw_fd(&self) -> RawFd {
        self.reader.as_raw_fd()
    }

    /// Whether stop has been signalled, without blocking.
    pub fn is_set(&self) -> bool {
        // A failed check answers "stopped": the loop then ends rather than
        // spin on a wait that cannot work.
        wait(&[Watch::readable(self.as_fd())], Some(Duration::ZERO)).map_or(true, |r| r[0])
    }

    /// Waits like [`wait`] with this signal added to the set: `Ok(None)`
    /// when stop was signalled (whatever else is ready), else which of
    /// `watches` are ready.
    pub fn wait(
        &self,
        watches: &[Watch<'_>],
        timeout: Option<Duration>,
    ) -> io::Result<Option<Vec<bool>>> {
        let mut all = Vec::with_capacity(watches.len() + 1);
        all.push(Watch::readable(self.as_fd()));
        all.extend_from_slice(watches);
        let mut ready = wait(&all, timeout)?;
        if ready[0] {
            return Ok(None);
        }
        ready.remove(0);
        Ok(Some(ready))
    }

    /// Sleeps for `period` unless stop is signalled first; true when it was.
    pub fn sleep(&self, period: Duration) -> bool {
        !matches!(self.wait(&[], Some(period)), Ok(Some(_)))
    }
}

/// A running event thread. Stopping or dropping it signals the
/// [`StopSignal`] and waits for the thread to return.
#[derive(Debug)]
pub struct EventThread {
    /// Dropping it hangs up the pipe, which wakes every wait on the reader.
    stop: Option<PipeWriter>,
    thread: Option<JoinHandle<()>>,
}

impl EventThread {
    /// Starts `body` on a thread called `name`. The thread inherits the
    /// caller's namespaces (network, mount), so a monitor watches the ones
    /// it was started in.
    ///
    /// Open what the loop waits on before spawning where a change between
    /// `start` and the first wait must not be missed.
    pub fn spawn<F>(name: impl Into<String>, body: F) -> io::Result<Self>
    where
        F: FnOnce(&StopSignal) + Send + 'static,
    {
        let (reader, writer) = std::io::pipe()?;
        let signal = StopSignal { reader };
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || body(&signal))?;
        Ok(Self {
            stop: Some(writer),
            thread: Some(thread),
        })
    }

    /// Signals the thread and waits until it has returned.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            // A panic in the loop has already cut off its samples; the
            // monitor has nothing to add by seeing it again here.
            let _ = thread.join();
        }
    }
}

impl Drop for EventThread {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;

    /// Generous: only a broken wake-up takes anywhere near this long.
    const PROMPT: Duration = Duration::from_secs(10);

    #[test]
    fn stop_wakes_a_thread_blocked_without_timeout() {
        let (started, running) = mpsc::channel();
        let (ended, finished) = mpsc::channel();
        let events = EventThread::spawn("vigil-test-events", move |stop: &StopSignal| {
            assert!(!stop.is_set(), "not stopped before stop is called");
            started.send(()).expect("test waits for start");
            let result = stop.wait(&[], None);
            ended
                .send((result.expect("wait").is_none(), stop.is_set()))
                .expect("test waits for the end");
        })
        .expect("spawn");
        running.recv_timeout(PROMPT).expect("thread started");
        let stopping = std::thread::spawn(move || events.stop());
        let (woken_by_stop, set) = finished.recv_timeout(PROMPT).expect("stop woke the wait");
        assert!(woken_by_stop, "the wait reports the stop");
        assert!(set, "is_set after stop");
        stopping.join().expect("stop returns after the join");
    }

    #[test]
    fn drop_signals_and_joins() {
        let returned = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&returned);
        let events = EventThread::spawn("vigil-test-drop", move |stop: &StopSignal| {
            while !stop.sleep(Duration::from_secs(3600)) {}
            flag.store(true, Ordering::SeqCst);
        })
        .expect("spawn");
        drop(events);
        assert!(
            returned.load(Ordering::SeqCst),
            "drop returned before the loop did"
        );
    }

    #[test]
    fn wait_reports_which_descriptor_is_ready() {
        use std::io::Write;
        let (quiet, _quiet_writer) = std::io::pipe().expect("pipe");
        let (loud, mut loud_writer) = std::io::pipe().expect("pipe");
        let watches = [
            Watch::readable(quiet.as_fd()),
            Watch::readable(loud.as_fd()),
        ];
        assert_eq!(
            wait(&watches, Some(Duration::ZERO)).expect("wait"),
            [false, false],
            "nothing ready yet: a timeout"
        );
        loud_writer.write_all(b"x").expect("write");
        assert_eq!(wait(&watches, None).expect("wait"), [false, true]);
    }

    #[test]
    fn stop_signal_wait_passes_through_other_descriptors() {
        use std::io::Write;
        let (data, mut data_writer) = std::io::pipe().expect("pipe");
        data_writer.write_all(b"x").expect("write");
        let (seen, saw) = mpsc::channel();
        let events = EventThread::spawn("vigil-test-pass", move |stop: &StopSignal| {
            let ready = stop.wait(&[Watch::readable(data.as_fd())], None);
            seen.send(ready.expect("wait")).expect("test waits");
            while !stop.sleep(Duration::from_secs(3600)) {}
        })
        .expect("spawn");
        assert_eq!(
            saw.recv_timeout(PROMPT).expect("wait returned"),
            Some(vec![true])
        );
        events.stop();
    }
}
