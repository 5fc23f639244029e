//! Serving a router on a listener so that no client can take the process down: connections are
//! capped per process and per client address (over a cap, closed at once and counted), and a
//! connection is closed when it idles with no request, takes too long over its headers, or stalls
//! in a body (`http` in pipeline.yaml). `axum::serve` has none of these: a client that opens
//! connections and sends nothing holds them, and one file descriptor each, for as long as it likes.
//!
//! Idle and header times are kept by the connection's reader ([`Watched`]), which knows whether a
//! request is in flight (a counter the service raises when a request's head has been read and
//! lowers when its answer has been written): with none in flight, it waits `idle_timeout` for a
//! first byte, then `header_read_timeout` for the rest of the headers. A body's pace is kept by the
//! body itself ([`Paced`]): a body that stalls for `body_read_timeout` fails its request, which is
//! answered 408 (problem+json) and closes the connection.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse as _;
use cashflow_core::config::HttpConfig;
use futures::task::AtomicWaker;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::Problem;

/// The connections open on a process's listeners, per client address and in all.
pub struct Gate {
    max_total: usize,
    max_per_address: usize,
    open: Mutex<Open>,
}

/// The connections open, per client address and in all.
#[derive(Default)]
struct Open {
    per_address: HashMap<IpAddr, usize>,
    total: usize,
}

impl Gate {
    /// Caps from `config`, the total lowered to fit the open-file limit: a quarter of it is kept
    /// for everything else the process opens (broker and store connections, files).
    pub fn new(config: &HttpConfig) -> Arc<Gate> {
        let open_files =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map_or(1024, |l| l.0);
        let fits = usize::try_from(open_files / 4 * 3).unwrap_or(usize::MAX);
        let max_total = config.max_connections.min(fits).max(1);
        Arc::new(Gate {
            max_total,
            max_per_address: config.max_connections_per_address.min(max_total),
            open: Mutex::new(Open::default()),
        })
    }

    pub fn max_total(&self) -> usize {
        self.max_total
    }

    /// A place for a connection from `ip`, or which cap it is over.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, &'static str> {
        let mut open = self.open.lock().expect("the gate's lock is never held across a panic");
        if open.total >= self.max_total {
            return Err("total");
        }
        let mine = open.per_address.entry(ip).or_default();
        if *mine >= self.max_per_address {
            return Err("address");
        }
        *mine += 1;
        open.total += 1;
        cashflow_observability::metrics().http_connections_open.inc();
        Ok(Admitted { gate: Arc::clone(self), ip })
    }
}

/// A connection's place; given back when it closes.
struct Admitted {
    gate: Arc<Gate>,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.gate.open.lock().expect("the gate's lock is never held across a panic");
        if let Some(mine) = open.per_address.get_mut(&self.ip) {
            *mine -= 1;
            if *mine == 0 {
                open.per_address.remove(&self.ip);
            }
        }
        open.total -= 1;
        cashflow_observability::metrics().http_connections_open.dec();
    }
}

/// A listener on `address` (`ip:port`, or a name that resolves) with a listen queue of 4096
/// (the kernel caps it at `net.core.somaxconn`): a burst of connections waits there for the accept
/// loop, which refuses what is over a cap at once, rather than hanging in the handshake.
pub async fn bind(address: &str) -> io::Result<TcpListener> {
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, format!("{address} resolves to no address"));
    for addr in tokio::net::lookup_host(address).await? {
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        match socket.bind(addr).and_then(|()| socket.listen(4096)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Raises the soft open-file limit to the hard one, and logs both.
pub fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        tracing::warn!("cannot read the open-file limit");
        return;
    };
    if soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit");
        return;
    }
    tracing::debug!(soft_before = soft, soft = hard, hard, "open-file limit");
}

/// Serves `app` on `listener` under `config`'s timeouts and `gate`'s caps until `shutdown`, then
/// lets open requests finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: HttpConfig,
    gate: Arc<Gate>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let app = app.layer(axum::middleware::from_fn(one_error_format));
    let timeouts =
        Timeouts { idle: config.idle_timeout, header: config.header_read_timeout, body: config.body_read_timeout };
    let connections = tokio_util::task::TaskTracker::new();
    let mut accept_errors = 0_u64;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some to close.
                    accept_errors += 1;
                    if accept_errors.is_power_of_two() {
                        tracing::warn!(error = %e, errors = accept_errors, "cannot accept connections");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let admitted = match gate.admit(peer.ip()) {
            Ok(admitted) => admitted,
            Err(cap) => {
                cashflow_observability::metrics().http_connections_refused.with_label_values(&[cap]).inc();
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (app, shutdown) = (app.clone(), shutdown.clone());
        connections.spawn(async move {
            connection(stream, peer, app, timeouts, shutdown).await;
            drop(admitted);
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

/// The longest request target, the most header fields and their bytes a request may carry. Above
/// them: 414 or 431, as problem+json. (hyper's own limits, which answer with an empty body, are
/// set far above these.)
const MAX_URI_BYTES: usize = 8 * 1024;
const MAX_HEADERS: usize = 100;
const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Every error from every listener as problem+json: the size limits above, a body in a content
/// coding (415), and what the
/// framework answers on its own (405 with its `Allow`, a body it could not read, a 404 without a
/// route) keeps its status and headers with a problem for a body. JSON errors (problems, OAuth
/// errors) pass as they are.
async fn one_error_format(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    if req.uri().path_and_query().map_or(0, |target| target.as_str().len()) > MAX_URI_BYTES {
        let detail = format!("the request target is longer than {MAX_URI_BYTES} bytes");
        return Problem::new(StatusCode::URI_TOO_LONG, "uri-too-long", "URI too long").detail(detail).into_response();
    }
    let header_bytes: usize = req.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum();
    if req.headers().len() > MAX_HEADERS || header_bytes > MAX_HEADER_BYTES {
        let detail = format!("at most {MAX_HEADERS} header fields of {MAX_HEADER_BYTES} bytes in all");
        let status = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
        return Problem::new(status, "header-fields-too-large", "Request header fields too large")
            .detail(detail)
            .into_response();
    }
    if let Some(refused) = crate::negotiate::refuse_content_coding(req.headers()) {
        return refused;
    }
    let response = next.run(req).await;
    let status = response.status();
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with(crate::PROBLEM_CONTENT_TYPE));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let said = axum::body::to_bytes(body, 1024).await.unwrap_or_default();
    let said = String::from_utf8_lossy(&said).trim().to_owned();
    let mut problem = Problem::of_status(status);
    if !said.is_empty() {
        problem = problem.detail(said);
    }
    let answer = problem.into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    for (name, value) in answer.headers() {
        parts.headers.insert(name, value.clone());
    }
    axum::response::Response::from_parts(parts, answer.into_body())
}

/// A request hyper cannot parse (not HTTP, a bad header line, a bad `Content-Length`) never
/// reaches the app: hyper answers it itself with a bare head (`400 Bad Request`,
/// `content-length: 0`) and closes. The app's own errors always carry a body and its type (see
/// [`one_error_format`]), so a head like that is hyper's: it goes out as a problem instead.
fn as_problem(written: &[u8]) -> Option<Vec<u8>> {
    // Most writes are bodies and successes: only a short error head is looked at.
    if written.len() > 512 || !(written.starts_with(b"HTTP/1.1 4") || written.starts_with(b"HTTP/1.1 5")) {
        return None;
    }
    let head = std::str::from_utf8(written).ok()?.to_ascii_lowercase();
    let status = StatusCode::from_u16(head.strip_prefix("http/1.1 ")?.get(..3)?.parse().ok()?).ok()?;
    let bare =
        head.ends_with("\r\n\r\n") && head.contains("\r\ncontent-length: 0\r\n") && !head.contains("\r\ncontent-type:");
    if !bare || !(status.is_client_error() || status.is_server_error()) {
        return None;
    }
    let problem = Problem::of_status(status).detail("the request could not be read as HTTP/1.1");
    let body = serde_json::to_vec(&problem).ok()?;
    let mut answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        crate::PROBLEM_CONTENT_TYPE,
        body.len()
    )
    .into_bytes();
    answer.extend(body);
    Some(answer)
}

#[derive(Clone, Copy)]
struct Timeouts {
    idle: Duration,
    header: Duration,
    body: Duration,
}

async fn connection(stream: TcpStream, peer: SocketAddr, app: Router, timeouts: Timeouts, shutdown: CancellationToken) {
    let requests = Arc::new(Requests::default());
    let io = TokioIo::new(Watched::new(stream, Arc::clone(&requests), timeouts));
    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let (app, requests) = (app.clone(), Arc::clone(&requests));
        requests.in_flight.fetch_add(1, Ordering::AcqRel);
        let in_flight = InFlight(requests);
        req.extensions_mut().insert(ConnectInfo(peer));
        let stalled = Arc::new(AtomicBool::new(false));
        // A request without a body (most reads) needs no timer.
        let req = req.map(|body| match body.is_end_stream() {
            true => Body::new(body),
            false => Body::new(Paced::new(body, timeouts.body, Arc::clone(&stalled))),
        });
        async move {
            let mut response = app.oneshot(req).await?;
            if stalled.load(Ordering::Acquire) {
                cashflow_observability::metrics().http_connections_timed_out.with_label_values(&["body"]).inc();
                let detail = "the request body stalled: no bytes within http.body_read_timeout_ms";
                response = Problem::new(StatusCode::REQUEST_TIMEOUT, "request-timeout", "Request timeout")
                    .detail(detail)
                    .into_response();
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            // The request is in flight until its answer's body has been written (or dropped).
            Ok::<_, std::convert::Infallible>(response.map(|body| Body::new(Tracked { body, _in_flight: in_flight })))
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    // The limits that matter are [`one_error_format`]'s, answered as problems: hyper's are far above.
    http.timer(TokioTimer::new()).header_read_timeout(None).max_headers(1_000).max_buf_size(1 << 20);
    let conn = http.serve_connection(io, service).with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, %peer, "connection closed");
            }
        }
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// A connection's requests: how many are in flight, how many have been answered, and the task
/// reading the connection (woken by an answer, so that it starts the idle wait: it may have been
/// waiting for bytes since before the request, unwatched).
#[derive(Default)]
struct Requests {
    in_flight: AtomicUsize,
    answered: AtomicU64,
    reader: AtomicWaker,
}

/// A request in flight; answered when dropped.
struct InFlight(Arc<Requests>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.answered.fetch_add(1, Ordering::AcqRel);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.reader.wake();
    }
}

/// An answer's body, holding its request in flight until it has been written.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A request's body, failed (and its request marked `stalled`) when no frame comes within its
/// timeout.
struct Paced {
    body: hyper::body::Incoming,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
    stalled: Arc<AtomicBool>,
}

impl Paced {
    fn new(body: hyper::body::Incoming, timeout: Duration, stalled: Arc<AtomicBool>) -> Self {
        Paced { body, timeout, deadline: Box::pin(tokio::time::sleep(timeout)), stalled }
    }
}

impl HttpBody for Paced {
    type Data = axum::body::Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                let after = Instant::now() + this.timeout;
                this.deadline.as_mut().reset(after);
                Poll::Ready(frame.map(|f| f.map_err(io::Error::other)))
            }
            Poll::Pending if this.deadline.as_mut().poll(cx).is_ready() => {
                this.stalled.store(true, Ordering::Release);
                Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::TimedOut, "the request body stalled"))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// What a connection with no request in flight is waiting for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// The first byte of a request.
    Idle,
    /// The rest of a request's headers.
    Headers,
}

/// The connection's socket, closing it (a read error) when, with no request in flight, the first
/// byte of the next one does not come within the idle timeout or its headers within the header
/// timeout.
struct Watched {
    stream: TcpStream,
    requests: Arc<Requests>,
    timeouts: Timeouts,
    waiting: Waiting,
    /// Requests answered when `deadline` was set: a new answer starts a new idle wait.
    answered: u64,
    deadline: Pin<Box<Sleep>>,
    /// hyper's own bare error answer, replaced by a problem: its bytes, and how many are written.
    replacing: Option<(Vec<u8>, usize)>,
}

impl Watched {
    fn new(stream: TcpStream, requests: Arc<Requests>, timeouts: Timeouts) -> Self {
        let deadline = Box::pin(tokio::time::sleep(timeouts.idle));
        Watched { stream, requests, timeouts, waiting: Waiting::Idle, answered: 0, deadline, replacing: None }
    }

    /// Writes the problem that replaces hyper's bare answer; once it is all out, the `consumed`
    /// bytes of hyper's are reported written.
    fn poll_replacement(&mut self, cx: &mut Context<'_>, consumed: usize) -> Poll<io::Result<usize>> {
        while let Some((bytes, written)) = &mut self.replacing {
            if *written == bytes.len() {
                self.replacing = None;
                return Poll::Ready(Ok(consumed));
            }
            match Pin::new(&mut self.stream).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                other => return other,
            }
        }
        Poll::Ready(Ok(consumed))
    }

    fn wait(&mut self, waiting: Waiting) {
        self.waiting = waiting;
        let after = if waiting == Waiting::Idle { self.timeouts.idle } else { self.timeouts.header };
        self.deadline.as_mut().reset(Instant::now() + after);
    }
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.requests.reader.register(cx.waker());
        let watched = this.requests.in_flight.load(Ordering::Acquire) == 0;
        if watched {
            let answered = this.requests.answered.load(Ordering::Acquire);
            if answered != this.answered {
                this.answered = answered;
                this.wait(Waiting::Idle);
            }
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if watched && this.waiting == Waiting::Idle && buf.filled().len() > before {
                    this.wait(Waiting::Headers);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if watched && this.deadline.as_mut().poll(cx).is_ready() => {
                let phase = if this.waiting == Waiting::Idle { "idle" } else { "header" };
                cashflow_observability::metrics().http_connections_timed_out.with_label_values(&[phase]).inc();
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, format!("{phase} timeout"))))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.replacing.is_none() {
            self.replacing = as_problem(buf).map(|bytes| (bytes, 0));
        }
        if self.replacing.is_some() {
            return self.poll_replacement(cx, buf.len());
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.replacing.is_none() {
            let head = bufs.iter().find(|b| !b.is_empty());
            self.replacing = head.and_then(|head| as_problem(head)).map(|bytes| (bytes, 0));
        }
        if self.replacing.is_some() {
            return self.poll_replacement(cx, bufs.iter().map(|b| b.len()).sum());
        }
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
