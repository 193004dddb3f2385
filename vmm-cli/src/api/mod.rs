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

mod control;
mod error;
mod format;
mod routes;
mod socket;

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::UnixListener;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

pub use control::{Action, Control, VmConfigInfo, VmControl};
pub use error::ApiError;
pub use format::StatsFormat;
pub use routes::PREFIX;
use socket::SocketFile;

/// Largest request body the API reads.
const MAX_BODY: usize = 64 * 1024;
/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
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
        let mut http = http1::Builder::new();
        // A client that connects and never finishes its request headers is
        // dropped instead of holding a connection forever.
        http.timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let control = Arc::clone(&control);
                        let service = service_fn(move |req| handle(req, Arc::clone(&control)));
                        let connection = http.serve_connection(TokioIo::new(stream), service);
                        let connection = graceful.watch(connection);
                        tokio::spawn(async move {
                            // A client hanging up mid-request is its business.
                            let _ = connection.await;
                        });
                    }
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

async fn handle(
    request: Request<Incoming>,
    control: Arc<dyn Control>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let answer = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => {
            let body = collected.to_bytes();
            let method = parts.method.as_str().to_owned();
            let path = parts.uri.path().to_owned();
            let query = parts.uri.query().map(str::to_owned);
            tokio::task::spawn_blocking(move || {
                routes::respond(&*control, &method, &path, query.as_deref(), &body)
            })
            .await
            .unwrap_or_else(|e| ApiError::internal(format!("the request failed: {e}")).into())
        }
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            ApiError::too_large(MAX_BODY).into()
        }
        Err(e) => ApiError::bad_request(format!("cannot read the request body: {e}")).into(),
    };
    Ok(to_http(answer))
}

fn to_http(answer: routes::Response) -> hyper::Response<Full<Bytes>> {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut builder = hyper::Response::builder()
        .status(status)
        .header(CONTENT_TYPE, answer.content_type);
    if let Some(allow) = &answer.allow {
        builder = builder.header(ALLOW, allow.as_str());
    }
    builder
        .body(Full::new(Bytes::from(answer.body)))
        .unwrap_or_else(|_| {
            let mut fallback = hyper::Response::new(Full::new(Bytes::from(
                ApiError::internal("cannot build the response").to_json(),
            )));
            *fallback.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            fallback
        })
}
