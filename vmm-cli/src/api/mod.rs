//! The control API: an HTTP/1.1 REST server on a Unix socket that steers a
//! running VM (`vmm run --api-socket PATH`). The endpoints are documented in
//! `vmm-cli/openapi.yaml`.
//!
//! The server runs on its own thread with a single-threaded tokio runtime;
//! each request is answered on a blocking thread (VM operations such as
//! pause wait for the EMTs), so several clients are served at once and a
//! slow request never stalls the others. Nothing a client sends can take
//! the VM down: every failure becomes a JSON error.
//!
//! ```text
//! $ vmm run --guest idle --api-socket /tmp/vm.sock &
//! $ curl --unix-socket /tmp/vm.sock -X PUT -d '{"action":"pause"}' http://localhost/v1/vm/state
//! {"action":"pause","state":"SUSPENDED"}
//! $ vmm resume --api-socket /tmp/vm.sock
//! VM resumed; state RUNNING
//! $ vmm stats '/IOM/Port/uart/*' --format prometheus --api-socket /tmp/vm.sock
//! ```

mod connections;
mod control;
mod error;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fake;
mod format;
mod routes;
mod service;
mod socket;

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{UnixListener, UnixStream};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

use connections::Registry;
pub use connections::{MAX_CONNECTIONS, Slot};
pub use control::{Action, Control, DeviceInfo, VmConfigInfo, VmControl};
pub use error::ApiError;
pub use format::StatsFormat;
pub use routes::PREFIX;
pub use service::{BODY_TIMEOUT, HEADER_TIMEOUT, MAX_BODY, serve_connection};
use socket::SocketFile;

/// How long shutting down waits for requests in flight (a power-off
/// request's answer, for one).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The API socket, bound but not serving yet: bind early so that a socket
/// in use is reported before the VM is built.
pub struct ApiSocket {
    listener: std::os::unix::net::UnixListener,
    file: SocketFile,
}

impl ApiSocket {
    /// Creates the socket at `path` (mode 0600), replacing a stale socket.
    pub fn bind(path: &Path) -> anyhow::Result<Self> {
        let (listener, file) = socket::bind(path)?;
        Ok(ApiSocket { listener, file })
    }

    /// Starts serving requests for `control` on a thread of its own.
    pub fn serve(self, control: Arc<dyn Control>) -> anyhow::Result<ApiServer> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the API server's runtime")?;
        self.listener
            .set_nonblocking(true)
            .context("cannot make the API socket non-blocking")?;
        let listener = {
            let _context = runtime.enter();
            UnixListener::from_std(self.listener).context("cannot register the API socket")?
        };
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("api-server".into())
            .spawn(move || serve_until(runtime, listener, control, stopped))
            .context("cannot start the API server thread")?;
        Ok(ApiServer {
            stop: Some(stop),
            thread: Some(thread),
            file: self.file,
        })
    }
}

/// A serving API; dropping it stops the server (letting requests in flight
/// finish) and removes the socket file.
pub struct ApiServer {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    // Dropped after `Drop::drop` has stopped the server.
    file: SocketFile,
}

impl ApiServer {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        self.file.path()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            // The server thread may have ended already; nothing to stop then.
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            eprintln!("vmm: the API server thread panicked");
        }
    }
}

fn serve_until(
    runtime: Runtime,
    listener: UnixListener,
    control: Arc<dyn Control>,
    mut stopped: oneshot::Receiver<()>,
) {
    runtime.block_on(async move {
        let graceful = GracefulShutdown::new();
        let registry = Registry::new(MAX_CONNECTIONS);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => admit(stream, &registry, &control, &graceful),
                    Err(e) => {
                        // Out of file descriptors and the like: say so, back
                        // off a little, keep serving.
                        eprintln!("vmm: API socket accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = &mut stopped => break,
            }
        }
        drop(listener);
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
            .await
            .is_err()
        {
            eprintln!("vmm: API requests still in flight at exit were dropped");
        }
    });
    runtime.shutdown_timeout(DRAIN_TIMEOUT);
}

/// Serves a new connection if the registry has (or makes) room for it;
/// turns it away with a `503` otherwise.
fn admit(
    stream: UnixStream,
    registry: &Arc<Registry>,
    control: &Arc<dyn Control>,
    graceful: &GracefulShutdown,
) {
    let Some(admission) = registry.admit() else {
        // A fresh socket's send buffer takes the short answer at once; if
        // it does not, the client is not reading and gets nothing.
        let _ = stream.try_write(&service::busy_answer());
        return;
    };
    let control = Arc::clone(control);
    let slot = Arc::clone(admission.slot());
    let connection = serve_connection(stream, control, slot, graceful);
    tokio::spawn(async move {
        connection.await;
        drop(admission);
    });
}
