//! The load generator of `ramole bench-serve`: a server on a loopback port of its own
//! ([`Background`]), and closed-loop clients that stream completions from it over HTTP/1.1
//! ([`run_load`]), timing each request from the client's side.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{Server, ServerError};

/// A [`Server`] serving on `127.0.0.1` (a free port) from a thread of its own, until
/// [`Background::stop`] or drop (graceful shutdown: the requests in progress finish first).
#[derive(Debug)]
pub struct Background {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<(), ServerError>>>,
}

impl Background {
    /// Starts serving `server` on a free loopback port.
    pub fn start(server: Server) -> Result<Self, ServerError> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("ramole-http".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .map_err(|e| ServerError::Setup(format!("starting the async runtime: {e}")))?;
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                        .await
                        .map_err(|e| ServerError::Setup(format!("listening on 127.0.0.1: {e}")))?;
                    let addr =
                        listener.local_addr().map_err(|e| ServerError::Setup(format!("the listening address: {e}")))?;
                    let _ = tx.send(addr);
                    server
                        .serve(listener, async move {
                            let _ = stopped.await;
                        })
                        .await
                })
            })
            .map_err(|e| ServerError::Setup(format!("starting the server thread: {e}")))?;
        match rx.recv() {
            Ok(addr) => Ok(Self { addr, stop: Some(stop), thread: Some(thread) }),
            // The thread ended before it listened: its error says why.
            Err(_) => Err(match thread.join() {
                Ok(Err(e)) => e,
                _ => ServerError::Setup("the server thread ended before it listened".into()),
            }),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops it and waits for the requests in progress and the engine's thread.
    pub fn stop(mut self) -> Result<(), ServerError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take().map(JoinHandle::join) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(e),
            Some(Err(_)) => Err(ServerError::Setup("the server thread panicked".into())),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// One completion request of a load.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadRequest {
    /// `model`: the base, an adapter or `ramole`.
    pub model: String,
    /// The prompt.
    pub prompt: String,
    /// `max_tokens`.
    pub max_tokens: usize,
}

/// A closed-loop load: `clients` clients at once, each sending `requests_per_client` streamed, greedy
/// completions one after the other; request `k` of client `c` is
/// `requests[(c + k * clients) % requests.len()]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    /// Concurrent clients.
    pub clients: usize,
    /// Requests each client sends, one after the other.
    pub requests_per_client: usize,
    /// The requests the clients draw from (at least one).
    pub requests: Vec<LoadRequest>,
    /// A bearer token to send, if the server wants one.
    pub api_key: Option<String>,
}

/// What one request measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Seconds from sending the request to the end of its stream.
    pub latency: f64,
    /// Seconds from sending the request to its first text.
    pub ttft: Option<f64>,
    /// Tokens generated (the stream's `usage`).
    pub completion_tokens: u64,
}

/// Why a request of a load failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The connection failed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The server answered with an error status.
    #[error("HTTP {status}: {body}")]
    Status {
        /// The status.
        status: u16,
        /// The body.
        body: String,
    },
    /// The stream carried an error, or was not what the API sends.
    #[error("stream: {0}")]
    Stream(String),
}

/// What a load measured.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Seconds from the first request sent to the last answer.
    pub wall_secs: f64,
    /// Each answered request.
    pub samples: Vec<Sample>,
    /// Each failed request, by client and index.
    pub failures: Vec<(usize, usize, LoadError)>,
}

impl LoadReport {
    /// Generated tokens per second of wall time, all clients together.
    pub fn tokens_per_sec(&self) -> f64 {
        let tokens: u64 = self.samples.iter().map(|s| s.completion_tokens).sum();
        if self.wall_secs > 0.0 { tokens as f64 / self.wall_secs } else { 0.0 }
    }

    /// Generated tokens, all clients together.
    pub fn completion_tokens(&self) -> u64 {
        self.samples.iter().map(|s| s.completion_tokens).sum()
    }

    /// The `q`-quantile (0–1, nearest rank) of the requests' latencies, seconds.
    pub fn latency(&self, q: f64) -> Option<f64> {
        quantile(self.samples.iter().map(|s| s.latency).collect(), q)
    }

    /// The `q`-quantile (0–1, nearest rank) of the times to first text, seconds.
    pub fn ttft(&self, q: f64) -> Option<f64> {
        quantile(self.samples.iter().filter_map(|s| s.ttft).collect(), q)
    }
}

/// The nearest-rank `q`-quantile of `values` (`None` when empty).
pub fn quantile(mut values: Vec<f64>, q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = (q.clamp(0.0, 1.0) * values.len() as f64).ceil() as usize;
    values.get(rank.saturating_sub(1).min(values.len() - 1)).copied()
}

/// Runs `load` against the server at `addr` and reports what each request measured.
pub fn run_load(addr: SocketAddr, load: &Load) -> LoadReport {
    if load.requests.is_empty() || load.clients == 0 {
        return LoadReport::default();
    }
    let started = Instant::now();
    let clients: Vec<_> = (0..load.clients)
        .map(|c| {
            let load = load.clone();
            std::thread::spawn(move || {
                (0..load.requests_per_client)
                    .map(|k| {
                        let request = &load.requests[(c + k * load.clients) % load.requests.len()];
                        (k, stream_completion(addr, request, load.api_key.as_deref()))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut report = LoadReport::default();
    for (c, client) in clients.into_iter().enumerate() {
        match client.join() {
            Ok(results) => {
                for (k, result) in results {
                    match result {
                        Ok(sample) => report.samples.push(sample),
                        Err(e) => report.failures.push((c, k, e)),
                    }
                }
            }
            Err(_) => report.failures.push((c, 0, LoadError::Stream("the client thread panicked".into()))),
        }
    }
    report.wall_secs = started.elapsed().as_secs_f64();
    report
}

/// The server's `/metrics` text.
pub fn fetch_metrics(addr: SocketAddr, api_key: Option<&str>) -> Result<String, LoadError> {
    let mut response = Response::send(addr, "GET", "/metrics", api_key, None)?;
    if response.status != 200 {
        return Err(response.error());
    }
    if !response.chunked {
        let mut text = String::new();
        response.reader.read_to_string(&mut text)?;
        return Ok(text);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.next_chunk()? {
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// A response being read: its status, whether its body is chunked, and the rest of the stream.
struct Response {
    status: u16,
    chunked: bool,
    reader: BufReader<TcpStream>,
}

impl Response {
    /// Sends one HTTP/1.1 request (`Connection: close`) and reads the response's head.
    fn send(
        addr: SocketAddr,
        method: &str,
        path: &str,
        api_key: Option<&str>,
        json: Option<&str>,
    ) -> Result<Self, LoadError> {
        let auth = api_key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
        let body = json
            .map_or_else(String::new, |b| format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len()));
        let head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}{body}\r\n");
        let mut stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(3600)))?;
        stream.write_all(head.as_bytes())?;
        stream.write_all(json.unwrap_or("").as_bytes())?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| LoadError::Stream(format!("not an HTTP status line: {line:?}")))?;
        let mut chunked = false;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                break;
            }
            let lower = line.to_ascii_lowercase();
            chunked |= lower.starts_with("transfer-encoding:") && lower.contains("chunked");
        }
        Ok(Self { status, chunked, reader })
    }

    /// The next chunk of a chunked body (`None` after the last).
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, LoadError> {
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let size = usize::from_str_radix(line.trim(), 16)
            .map_err(|_| LoadError::Stream(format!("not a chunk size: {line:?}")))?;
        if size == 0 {
            return Ok(None);
        }
        let mut chunk = vec![0; size + 2];
        self.reader.read_exact(&mut chunk)?;
        chunk.truncate(size);
        Ok(Some(chunk))
    }

    /// The response as an error, with what is left of its body.
    fn error(mut self) -> LoadError {
        let mut rest = String::new();
        let _ = self.reader.read_to_string(&mut rest);
        LoadError::Status { status: self.status, body: rest }
    }
}

/// The value of an unlabelled metric in a Prometheus text exposition.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// Sends one streamed greedy completion and reads its stream to the end.
pub fn stream_completion(addr: SocketAddr, request: &LoadRequest, api_key: Option<&str>) -> Result<Sample, LoadError> {
    let body = serde_json::json!({
        "model": request.model, "prompt": request.prompt, "max_tokens": request.max_tokens,
        "temperature": 0, "stream": true, "stream_options": {"include_usage": true},
    })
    .to_string();
    let sent = Instant::now();
    let mut response = Response::send(addr, "POST", "/v1/completions", api_key, Some(&body))?;
    if response.status != 200 || !response.chunked {
        return Err(response.error());
    }

    let mut ttft = None;
    let mut completion_tokens = None;
    let mut pending: Vec<u8> = Vec::new();
    while let Some(chunk) = response.next_chunk()? {
        pending.extend_from_slice(&chunk);
        // Complete events end with a blank line.
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            for data in String::from_utf8_lossy(&event).lines().filter_map(|l| l.strip_prefix("data:")) {
                let data = data.trim();
                if data == "[DONE]" {
                    continue;
                }
                let value: serde_json::Value =
                    serde_json::from_str(data).map_err(|e| LoadError::Stream(format!("{e}: {data}")))?;
                if let Some(error) = value.get("error") {
                    return Err(LoadError::Stream(error.to_string()));
                }
                let text = value["choices"][0]["text"].as_str().unwrap_or("");
                if ttft.is_none() && !text.is_empty() {
                    ttft = Some(sent.elapsed().as_secs_f64());
                }
                if let Some(n) = value["usage"]["completion_tokens"].as_u64() {
                    completion_tokens = Some(n);
                }
            }
        }
    }
    let completion_tokens =
        completion_tokens.ok_or_else(|| LoadError::Stream("the stream ended without its usage".into()))?;
    Ok(Sample { latency: sent.elapsed().as_secs_f64(), ttft, completion_tokens })
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(v.clone(), 0.5), Some(50.0));
        assert_eq!(quantile(v.clone(), 0.99), Some(99.0));
        assert_eq!(quantile(v.clone(), 1.0), Some(100.0));
        assert_eq!(quantile(v, 0.0), Some(1.0));
        assert_eq!(quantile(vec![3.0], 0.99), Some(3.0));
        assert_eq!(quantile(vec![], 0.5), None);
    }
}
