//! The fault-injecting HTTP/1.1 proxy: one listener per participant, in the chaos process.
//! The coordinator is given the proxy's URL for each participant, so every prepare, commit and
//! abort passes through here, where a seeded RNG decides what goes wrong with it.
//!
//! Raw TCP rather than a web framework, because the faults are about the connection itself:
//! closing it without an answer, resetting it, or answering something the participant never
//! said. Requests are forwarded with `reqwest`.

use rand::Rng as _;
use rand::rngs::StdRng;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Largest request head or body the proxy accepts (the coordinator's are a few hundred bytes).
const MAX_REQUEST: usize = 1 << 20;

/// Bound on one forwarded call; the coordinator's own timeouts are shorter or equal.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest time a dropped request or response keeps its connection open before closing it, as
/// a lost packet would leave the caller waiting.
const MAX_HOLD_MS: u64 = 1000;

/// Longest delay of the late copy of a duplicated request.
const MAX_LATE_DUPLICATE_MS: u64 = 2000;

/// The probability of each fault per proxied request.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// The request is held up to `max_delay` before it is handled (independent of the rest).
    pub delay: f64,
    /// Longest delay.
    pub max_delay: Duration,
    /// The request is swallowed: the participant never sees it; the connection closes unanswered.
    pub drop_request: f64,
    /// The participant acts on the request, but the connection closes without its answer.
    pub drop_response: f64,
    /// The participant gets the request twice: both at once, or the second up to 2 s later.
    pub duplicate: f64,
    /// The caller gets a 500 answer: half the time without forwarding, half after it.
    pub http_500: f64,
    /// The connection is reset (RST) instead of being forwarded.
    pub reset: f64,
}

impl Faults {
    /// The exclusive faults with their probabilities, in the order they are drawn.
    fn exclusive(&self) -> [(Fault, f64); 5] {
        [
            (Fault::Reset, self.reset),
            (Fault::DropRequest, self.drop_request),
            (Fault::Http500, self.http_500),
            (Fault::DropResponse, self.drop_response),
            (Fault::Duplicate, self.duplicate),
        ]
    }

    /// Checks that every rate is a probability and the exclusive ones sum to at most 1.
    pub fn validate(&self) -> Result<(), String> {
        let all = [
            ("delay", self.delay),
            ("reset", self.reset),
            ("drop-request", self.drop_request),
            ("http-500", self.http_500),
            ("drop-response", self.drop_response),
            ("duplicate", self.duplicate),
        ];
        for (name, rate) in all {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("--{name}-rate must be between 0 and 1, got {rate}"));
            }
        }
        let sum: f64 = self.exclusive().iter().map(|(_, r)| r).sum();
        if sum > 1.0 {
            return Err(format!(
                "the rates of reset, drop-request, http-500, drop-response and duplicate add up \
                 to {sum}, more than 1"
            ));
        }
        Ok(())
    }
}

/// One kind of fault (besides the delay).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Reset,
    DropRequest,
    Http500,
    DropResponse,
    Duplicate,
}

/// What happens to one request: drawn from the proxy's RNG when it arrives.
#[derive(Debug, Clone, Copy)]
struct Plan {
    delay: Option<Duration>,
    fault: Option<Fault>,
    /// How long a dropped request or response keeps the connection.
    hold: Duration,
    /// For a duplicate: `None` sends both copies at once, `Some(d)` the second `d` later.
    late: Option<Duration>,
    /// For a 500: forward first (the participant acted) or not.
    after_forward: bool,
}

/// What one proxy did, by kind.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Requests received.
    pub requests: AtomicU64,
    /// Requests that reached the participant (duplicates count twice).
    pub forwarded: AtomicU64,
    /// Forwarding failed (participant down): the connection was reset.
    pub unreachable: AtomicU64,
    /// Faults injected, by kind.
    pub delay: AtomicU64,
    /// See [`Faults::drop_request`].
    pub drop_request: AtomicU64,
    /// See [`Faults::drop_response`].
    pub drop_response: AtomicU64,
    /// See [`Faults::duplicate`].
    pub duplicate: AtomicU64,
    /// See [`Faults::http_500`].
    pub http_500: AtomicU64,
    /// See [`Faults::reset`].
    pub reset: AtomicU64,
    /// Requests being handled now, including late duplicates not yet sent: the proxy is idle
    /// (nothing more can reach a participant from it) when this is zero.
    pub busy: AtomicI64,
}

impl ProxyStats {
    /// Adds `other` into a total.
    pub fn add(&self, other: &ProxyStats) {
        let pairs = [
            (&self.requests, &other.requests),
            (&self.forwarded, &other.forwarded),
            (&self.unreachable, &other.unreachable),
            (&self.delay, &other.delay),
            (&self.drop_request, &other.drop_request),
            (&self.drop_response, &other.drop_response),
            (&self.duplicate, &other.duplicate),
            (&self.http_500, &other.http_500),
            (&self.reset, &other.reset),
        ];
        for (total, part) in pairs {
            total.fetch_add(part.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    /// Faults injected, all kinds.
    pub fn faults(&self) -> u64 {
        [
            &self.delay,
            &self.drop_request,
            &self.drop_response,
            &self.duplicate,
            &self.http_500,
            &self.reset,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

/// Counts a request as busy until dropped.
struct Busy(Arc<ProxyStats>);

impl Busy {
    fn new(stats: &Arc<ProxyStats>) -> Busy {
        stats.busy.fetch_add(1, Ordering::SeqCst);
        Busy(stats.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running proxy.
pub struct Proxy {
    /// The URL the coordinator is given for the participant.
    pub url: String,
    /// What it did.
    pub stats: Arc<ProxyStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What every connection of one proxy shares.
struct Shared {
    /// `http://127.0.0.1:PORT` of the participant.
    target: String,
    http: reqwest::Client,
    faults: Faults,
    /// Faults are injected only while this is true.
    on: Arc<AtomicBool>,
    rng: Mutex<StdRng>,
    stats: Arc<ProxyStats>,
}

/// Starts a proxy on a fresh port of 127.0.0.1 in front of `target`.
pub async fn start(
    target: String,
    faults: Faults,
    on: Arc<AtomicBool>,
    rng: StdRng,
) -> std::io::Result<Proxy> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let stats = Arc::new(ProxyStats::default());
    let shared = Arc::new(Shared {
        target,
        http: reqwest::Client::builder()
            .timeout(FORWARD_TIMEOUT)
            .build()
            .map_err(std::io::Error::other)?,
        faults,
        on,
        rng: Mutex::new(rng),
        stats: stats.clone(),
    });
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve_connection(shared.clone(), stream));
        }
    });
    Ok(Proxy { url, stats, task })
}

impl Shared {
    /// Draws what happens to the next request. Always the same number of draws per request, so
    /// that a seed gives the same sequence of plans.
    fn draw(&self) -> Plan {
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        let delay_roll: f64 = rng.random();
        let max_delay = u64::try_from(self.faults.max_delay.as_millis()).unwrap_or(u64::MAX);
        let delay_ms = rng.random_range(1..=max_delay.max(1));
        let fault_roll: f64 = rng.random();
        let hold_ms = rng.random_range(0..=MAX_HOLD_MS);
        let late_ms = rng.random_range(0..=MAX_LATE_DUPLICATE_MS);
        let coin: bool = rng.random();
        drop(rng);
        if !self.on.load(Ordering::SeqCst) {
            return Plan {
                delay: None,
                fault: None,
                hold: Duration::ZERO,
                late: None,
                after_forward: false,
            };
        }
        let mut cumulative = 0.0;
        let mut fault = None;
        for (kind, rate) in self.faults.exclusive() {
            cumulative += rate;
            if fault_roll < cumulative {
                fault = Some(kind);
                break;
            }
        }
        Plan {
            delay: (delay_roll < self.faults.delay).then(|| Duration::from_millis(delay_ms)),
            fault,
            hold: Duration::from_millis(hold_ms),
            late: coin.then(|| Duration::from_millis(late_ms)),
            after_forward: coin,
        }
    }

    /// Forwards `req` to the participant: (status, content type, body).
    async fn forward(&self, req: &Request) -> Result<Answer, reqwest::Error> {
        let method =
            reqwest::Method::from_bytes(req.method.as_bytes()).unwrap_or(reqwest::Method::POST);
        let mut call = self
            .http
            .request(method, format!("{}{}", self.target, req.path))
            .body(req.body.clone());
        if let Some(ct) = &req.content_type {
            call = call.header(reqwest::header::CONTENT_TYPE, ct);
        }
        let response = call.send().await?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response.bytes().await?.to_vec();
        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        Ok(Answer {
            status,
            content_type,
            body,
        })
    }
}

/// One request as read from the coordinator.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    content_type: Option<String>,
    body: Vec<u8>,
    /// The caller asked to close the connection after the answer.
    close: bool,
}

/// One answer to write back.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: Option<String>,
    body: Vec<u8>,
}

impl Answer {
    fn http_500() -> Answer {
        Answer {
            status: 500,
            content_type: Some("application/json".into()),
            body: br#"{"error":{"code":"chaos_injected","message":"500 injected by twopc-chaos"}}"#
                .to_vec(),
        }
    }
}

/// Serves one connection from the coordinator (keep-alive: many requests in turn).
async fn serve_connection(shared: Arc<Shared>, mut stream: TcpStream) {
    let mut buf = Vec::new();
    loop {
        let req = match read_request(&mut stream, &mut buf).await {
            Ok(Some(req)) => req,
            Ok(None) | Err(_) => return,
        };
        let busy = Busy::new(&shared.stats);
        shared.stats.requests.fetch_add(1, Ordering::Relaxed);
        let plan = shared.draw();
        if let Some(delay) = plan.delay {
            shared.stats.delay.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(delay).await;
        }
        let answer = match plan.fault {
            Some(Fault::Reset) => {
                shared.stats.reset.fetch_add(1, Ordering::Relaxed);
                reset(stream);
                return;
            }
            Some(Fault::DropRequest) => {
                shared.stats.drop_request.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(plan.hold).await;
                return;
            }
            Some(Fault::Http500) => {
                shared.stats.http_500.fetch_add(1, Ordering::Relaxed);
                if plan.after_forward {
                    let _ = shared.forward(&req).await;
                }
                Answer::http_500()
            }
            Some(Fault::DropResponse) => {
                if shared.forward(&req).await.is_err() {
                    shared.stats.unreachable.fetch_add(1, Ordering::Relaxed);
                    reset(stream);
                    return;
                }
                shared.stats.drop_response.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(plan.hold).await;
                return;
            }
            Some(Fault::Duplicate) => {
                shared.stats.duplicate.fetch_add(1, Ordering::Relaxed);
                let first = match plan.late {
                    None => {
                        let (a, _) = tokio::join!(shared.forward(&req), shared.forward(&req));
                        a
                    }
                    Some(late) => {
                        let copy = req.clone();
                        let bg = shared.clone();
                        let late_busy = Busy::new(&shared.stats);
                        tokio::spawn(async move {
                            tokio::time::sleep(late).await;
                            let _ = bg.forward(&copy).await;
                            drop(late_busy);
                        });
                        shared.forward(&req).await
                    }
                };
                match first {
                    Ok(answer) => answer,
                    Err(_) => {
                        shared.stats.unreachable.fetch_add(1, Ordering::Relaxed);
                        reset(stream);
                        return;
                    }
                }
            }
            None => match shared.forward(&req).await {
                Ok(answer) => answer,
                Err(_) => {
                    shared.stats.unreachable.fetch_add(1, Ordering::Relaxed);
                    reset(stream);
                    return;
                }
            },
        };
        if write_answer(&mut stream, &answer, req.close).await.is_err() || req.close {
            return;
        }
        drop(busy);
    }
}

/// Closes the connection with a TCP reset.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn write_answer(stream: &mut TcpStream, a: &Answer, close: bool) -> std::io::Result<()> {
    let reason = reqwest::StatusCode::from_u16(a.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown");
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\ncontent-length: {}\r\n",
        a.status,
        a.body.len()
    );
    if let Some(ct) = &a.content_type {
        head.push_str(&format!("content-type: {ct}\r\n"));
    }
    if close {
        head.push_str("connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&a.body);
    stream.write_all(&out).await?;
    stream.flush().await
}

/// Reads one HTTP/1.1 request (`Content-Length` or chunked body); `None` at a clean end of
/// the connection. `buf` keeps bytes read past the request for the next one.
async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Request>> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_REQUEST {
            return Err(invalid("request head too large"));
        }
        if fill(stream, buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(invalid("connection closed inside a request"))
            };
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_owned();
    let path = first.next().unwrap_or("/").to_owned();
    let (mut length, mut chunked, mut close, mut content_type) = (0usize, false, false, None);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                length = value.parse().map_err(|_| invalid("bad content-length"))?;
            }
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "connection" => close = value.eq_ignore_ascii_case("close"),
            "content-type" => content_type = Some(value.to_owned()),
            _ => {}
        }
    }
    let body = if chunked {
        read_chunked(stream, buf).await?
    } else {
        if length > MAX_REQUEST {
            return Err(invalid("request body too large"));
        }
        while buf.len() < length {
            if fill(stream, buf).await? == 0 {
                return Err(invalid("connection closed inside a body"));
            }
        }
        buf.drain(..length).collect()
    };
    Ok(Some(Request {
        method,
        path,
        content_type,
        body,
        close,
    }))
}

/// Reads a chunked body (trailers are skipped).
async fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = find(buf, b"\r\n") {
                break i;
            }
            if fill(stream, buf).await? == 0 {
                return Err(invalid("connection closed inside a chunk"));
            }
        };
        let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| invalid("bad chunk size"))?;
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                let end = loop {
                    if let Some(i) = find(buf, b"\r\n") {
                        break i;
                    }
                    if fill(stream, buf).await? == 0 {
                        return Err(invalid("connection closed inside trailers"));
                    }
                };
                buf.drain(..end + 2);
                if end == 0 {
                    return Ok(body);
                }
            }
        }
        if body.len() + size > MAX_REQUEST {
            return Err(invalid("request body too large"));
        }
        while buf.len() < size + 2 {
            if fill(stream, buf).await? == 0 {
                return Err(invalid("connection closed inside a chunk"));
            }
        }
        body.extend(buf.drain(..size));
        buf.drain(..2);
    }
}

/// Reads more bytes into `buf`; answers how many (0 at the end of the stream).
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}
