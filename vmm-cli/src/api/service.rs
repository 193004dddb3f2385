//! One API connection: HTTP/1.1 over any byte stream, each request read
//! within bounds of size and time and answered by the routes on a blocking
//! thread.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONNECTION, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};

use super::connections::Slot;
use super::control::Control;
use super::error::ApiError;
use super::routes;

/// Largest request body the API reads.
pub const MAX_BODY: usize = 64 * 1024;
/// How long a client may take to send its request headers (and how long
/// a connection may idle between requests).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's body once its headers
/// are in.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// The most a connection buffers: the request line and headers must fit
/// (larger ones are answered `431`); bodies stream through it.
const MAX_BUFFER: usize = 16 * 1024;

/// Serves the requests arriving on `io` until the client hangs up, breaks
/// a limit, the connection is evicted through `slot`, or `graceful` shuts
/// the server down (letting a request in flight finish).
pub fn serve_connection<I>(
    io: I,
    control: Arc<dyn Control>,
    slot: Arc<Slot>,
    graceful: &GracefulShutdown,
) -> impl Future<Output = ()> + Send + 'static
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut http = http1::Builder::new();
    // A client that connects and never finishes its request headers is
    // dropped instead of holding a connection forever.
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_BUFFER);
    let requests = Arc::clone(&slot);
    let service =
        service_fn(move |request| handle(request, Arc::clone(&control), Arc::clone(&requests)));
    let connection = graceful.watch(http.serve_connection(TokioIo::new(io), service));
    async move {
        tokio::select! {
            // A client hanging up mid-request is its business.
            _ = connection => {}
            () = slot.evicted() => {}
        }
    }
}

async fn handle(
    request: Request<Incoming>,
    control: Arc<dyn Control>,
    slot: Arc<Slot>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await;
    let answer = match body {
        Ok(Ok(collected)) => {
            slot.mark_delivered();
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
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return Ok(closing(ApiError::too_large(MAX_BODY)));
        }
        Ok(Err(e)) => {
            return Ok(closing(ApiError::bad_request(format!(
                "cannot read the request body: {e}"
            ))));
        }
        Err(_) => return Ok(closing(ApiError::request_timeout(BODY_TIMEOUT))),
    };
    Ok(to_http(answer))
}

/// The answer to a request whose body was not read to its end: the
/// connection closes after it (what is left of the body is not waited for).
fn closing(error: ApiError) -> hyper::Response<Full<Bytes>> {
    let mut response = to_http(error.into());
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
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

/// The whole answer (`503`) to a connection turned away because every
/// place is taken by a request in progress; written without waiting, as
/// the connection closes right after.
pub fn busy_answer() -> Vec<u8> {
    let body =
        ApiError::unavailable("the API is serving as many requests as it can; try again").to_json();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
