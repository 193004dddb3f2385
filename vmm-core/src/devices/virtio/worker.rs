//! [`QueueWorker`]: the thread a device serves its queues on.
//!
//! The worker waits (epoll) on the queues' notification eventfds, on any
//! host file descriptors the device adds (a tap, a socket) and on its own
//! stop eventfd. It owns the device's working state `S` (the queues among
//! it) while it runs and hands it back when stopped, so that
//! [`VirtioDevice::deactivate`](super::VirtioDevice::deactivate) can return
//! the queues with their positions.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::QueueHandle;

/// How long [`WorkerControl::stop`] waits for the worker to finish the
/// request it is serving.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The token of the stop eventfd (queue tokens are their indices, host
/// tokens are offset by [`HOST_TOKEN_BASE`]).
const STOP_TOKEN: u64 = u64::MAX;
/// Host descriptors' tokens start here.
const HOST_TOKEN_BASE: u64 = 1 << 32;

/// What woke the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerEvent {
    /// The driver notified queue `index` (the eventfd is already drained).
    Queue(u16),
    /// Host descriptor `token` (as given to [`QueueWorker::watch`]) is ready
    /// for what `events` says.
    Host {
        /// The token the descriptor was registered with.
        token: u32,
        /// Readable, writable, hung up...
        events: EventSet,
    },
}

/// A device's worker before it starts: the descriptors it will wait on.
pub struct QueueWorker {
    epoll: Epoll,
    queues: Vec<(u16, Arc<EventFd>)>,
    stop: Arc<EventFd>,
}

/// A running worker: stops it and takes its state back.
pub struct WorkerControl<S> {
    name: String,
    stop: Arc<EventFd>,
    done: mpsc::Receiver<S>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn watch_fd(epoll: &Epoll, fd: RawFd, token: u64, events: EventSet) -> std::io::Result<()> {
    epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
}

impl QueueWorker {
    /// A worker waiting on the notifications of `queues`.
    pub fn new(queues: &[QueueHandle]) -> std::io::Result<QueueWorker> {
        let epoll = Epoll::new()?;
        let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        watch_fd(&epoll, stop.as_raw_fd(), STOP_TOKEN, EventSet::IN)?;
        let mut notify = Vec::with_capacity(queues.len());
        for q in queues {
            watch_fd(
                &epoll,
                q.notify.as_raw_fd(),
                u64::from(q.index),
                EventSet::IN,
            )?;
            notify.push((q.index, Arc::clone(&q.notify)));
        }
        Ok(QueueWorker {
            epoll,
            queues: notify,
            stop,
        })
    }

    /// Also waits on host descriptor `fd` for `events`; it is reported as
    /// [`WorkerEvent::Host`] with `token`. The descriptor must stay open
    /// while the worker runs (keep its owner in the worker's state).
    pub fn watch(&mut self, fd: RawFd, token: u32, events: EventSet) -> std::io::Result<()> {
        watch_fd(&self.epoll, fd, HOST_TOKEN_BASE + u64::from(token), events)
    }

    /// Starts the thread `name`: `handler` is called with the state for
    /// every event until [`WorkerControl::stop`]. A handler that returns an
    /// error ends the worker (the error is logged; the device should have
    /// asked for a reset through its interrupt first).
    pub fn spawn<S, F>(
        self,
        name: &str,
        mut state: S,
        mut handler: F,
    ) -> std::io::Result<WorkerControl<S>>
    where
        S: Send + 'static,
        F: FnMut(&mut S, WorkerEvent) -> Result<(), String> + Send + 'static,
    {
        let (tx, done) = mpsc::sync_channel(1);
        let stop = Arc::clone(&self.stop);
        let thread_name = name.to_owned();
        let thread = std::thread::Builder::new()
            .name(format!("virtio-{name}"))
            .spawn(move || {
                if let Err(e) = self.serve(&mut state, &mut handler) {
                    tracing::warn!("virtio device {thread_name}: worker stopped: {e}");
                }
                let _ = tx.send(state);
            })?;
        Ok(WorkerControl {
            name: name.to_owned(),
            stop,
            done,
            thread: Some(thread),
        })
    }

    fn serve<S>(
        &self,
        state: &mut S,
        handler: &mut impl FnMut(&mut S, WorkerEvent) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut events = vec![EpollEvent::default(); 16];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("epoll: {e}")),
            };
            for ev in &events[..n] {
                match ev.data() {
                    STOP_TOKEN => return Ok(()),
                    token if token >= HOST_TOKEN_BASE => {
                        let token = (token - HOST_TOKEN_BASE) as u32;
                        handler(
                            state,
                            WorkerEvent::Host {
                                token,
                                events: ev.event_set(),
                            },
                        )?;
                    }
                    index => {
                        let Some((index, fd)) =
                            self.queues.iter().find(|(i, _)| u64::from(*i) == index)
                        else {
                            continue;
                        };
                        // Non-blocking: an empty counter (a spurious wake)
                        // is no notification.
                        if fd.read().is_ok() {
                            handler(state, WorkerEvent::Queue(*index))?;
                        }
                    }
                }
            }
        }
    }
}

impl<S> WorkerControl<S> {
    /// Stops the worker once it has finished the event it is serving and
    /// returns its state; an error if it does not stop within
    /// [`STOP_TIMEOUT`] (a host disk that does not answer).
    pub fn stop(mut self) -> std::io::Result<S> {
        self.stop.write(1)?;
        let state = self.done.recv_timeout(STOP_TIMEOUT).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the worker of {} did not stop within {} s",
                    self.name,
                    STOP_TIMEOUT.as_secs()
                ),
            )
        })?;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        Ok(state)
    }
}

impl<S> Drop for WorkerControl<S> {
    fn drop(&mut self) {
        // A worker nobody stopped (the VM ends): tell it to go, do not wait.
        let _ = self.stop.write(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::QueueT;

    fn handle(index: u16) -> QueueHandle {
        QueueHandle {
            index,
            queue: super::super::Queue::new(16).unwrap(),
            notify: Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
        }
    }

    #[test]
    fn notifications_reach_the_handler_and_stop_returns_the_state() {
        let queues = [handle(0), handle(1)];
        let worker = QueueWorker::new(&queues).unwrap();
        let (seen_tx, seen) = mpsc::channel();
        let control = worker
            .spawn("test", 0u32, move |count, ev| {
                *count += 1;
                seen_tx.send(ev).unwrap();
                Ok(())
            })
            .unwrap();
        queues[1].notify.write(1).unwrap();
        assert_eq!(
            seen.recv_timeout(Duration::from_secs(5)).unwrap(),
            WorkerEvent::Queue(1)
        );
        queues[0].notify.write(3).unwrap();
        assert_eq!(
            seen.recv_timeout(Duration::from_secs(5)).unwrap(),
            WorkerEvent::Queue(0)
        );
        assert_eq!(control.stop().unwrap(), 2);
    }

    #[test]
    fn host_descriptors_are_reported_with_their_token() {
        let queues = [handle(0)];
        let mut worker = QueueWorker::new(&queues).unwrap();
        let host = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        worker.watch(host.as_raw_fd(), 7, EventSet::IN).unwrap();
        let (seen_tx, seen) = mpsc::channel();
        let control = worker
            .spawn("test-host", (), move |(), ev| {
                seen_tx.send(ev).unwrap();
                Ok(())
            })
            .unwrap();
        host.write(1).unwrap();
        match seen.recv_timeout(Duration::from_secs(5)).unwrap() {
            WorkerEvent::Host { token, events } => {
                assert_eq!(token, 7);
                assert!(events.contains(EventSet::IN));
            }
            other => panic!("{other:?}"),
        }
        host.read().unwrap();
        control.stop().unwrap();
    }

    #[test]
    fn a_failing_handler_ends_the_worker_and_stop_still_returns() {
        let queues = [handle(0)];
        let worker = QueueWorker::new(&queues).unwrap();
        let control = worker
            .spawn("test-fail", 5u8, |_, _| Err("broken ring".into()))
            .unwrap();
        queues[0].notify.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(control.stop().unwrap(), 5);
    }
}
