//! A server on the tiny Llama (byte-level tokenizer) with the fixture's four adapters in a pool, and a
//! plain HTTP/1.1 client for loopback requests.
#![allow(dead_code)] // each test binary uses a part

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ramole_assets::AssetCache;
use ramole_batch::Engine;
use ramole_core::backend::{Selected, device};
use ramole_pipeline::Ramole;
use ramole_retriever::{LoraPool, SentenceEncoder};
use ramole_server::bench::Background;
use ramole_server::{ServeConfig, Server};

/// `tests/data/fixtures/tiny-llama` of the repository.
pub fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/fixtures/tiny-llama")
}

/// Sample inputs of each fixture adapter: what retrieval tells them apart by.
pub const SAMPLES: [(&str, [&str; 3]); 4] = [
    ("a0", ["Plural of mouse:", "Plural of goose:", "Plural of child:"]),
    ("a1", ["What is 12 + 30?", "What is 7 + 8?", "What is 41 + 1?"]),
    ("a2", ["Translate to French: cat", "Translate to French: house", "Translate to French: red"]),
    (
        "a3",
        ["Is this review positive? Great film.", "Is this review positive? Dull.", "Is this review positive? Fine."],
    ),
];

/// Copies an adapter folder.
pub fn copy_adapter(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(from.join(file), to.join(file)).expect("copy");
    }
}

/// The encoder every test uses (the untrained all-MiniLM-L6-v2 from the asset cache).
pub fn encoder() -> SentenceEncoder<Selected> {
    let minilm = AssetCache::from_env().expect("cache").quiet(true).minilm_dir().expect("MiniLM");
    SentenceEncoder::<Selected>::load(&minilm, &device()).expect("encoder")
}

/// A pool in `dir/pool` with the fixture's four adapters (copied into it), and the model folder.
pub fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let model = ramole_testkit::tiny_llama_with_tokenizer(dir).expect("model");
    let pool_dir = dir.join("pool");
    let (mut pool, _) = LoraPool::create(&pool_dir).expect("pool");
    let encoder = encoder();
    for (name, samples) in SAMPLES {
        let to = pool_dir.join("adapters").join(name);
        copy_adapter(&fixture().join("adapters").join(name), &to);
        let samples: Vec<String> = samples.iter().map(|s| s.to_string()).collect();
        pool.add(name, Some(&to), &samples, &encoder).expect("add");
    }
    (model, pool_dir)
}

/// The pipeline over a pool.
pub fn ramole(model: &Path, pool_dir: &Path) -> Ramole<Selected> {
    let engine = Engine::<Selected>::load(model, &device()).expect("engine");
    let (pool, skipped) = LoraPool::open(pool_dir).expect("pool");
    assert!(skipped.is_empty());
    let (ramole, unservable) = Ramole::new(engine, encoder(), pool).expect("ramole");
    assert!(unservable.is_empty());
    ramole
}

/// A running server on a free loopback port; stops when dropped.
pub struct Running {
    pub addr: SocketAddr,
    server: Option<Background>,
}

impl Running {
    pub fn start(ramole: Ramole<Selected>, config: ServeConfig) -> Self {
        let server = Background::start(Server::new(ramole, config).expect("server")).expect("the server starts");
        Self { addr: server.addr(), server: Some(server) }
    }

    /// A handle on a server another `Running` owns (for a second client thread).
    pub fn at(addr: SocketAddr) -> Self {
        Self { addr, server: None }
    }

    /// Stops the server and waits for it (graceful shutdown).
    pub fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().expect("the server thread ends cleanly");
        }
    }

    pub fn get(&self, path: &str) -> Response {
        request(self.addr, "GET", path, None, &[])
    }

    pub fn post(&self, path: &str, body: &serde_json::Value) -> Response {
        request(self.addr, "POST", path, Some(("application/json", body.to_string().into_bytes())), &[])
    }
}

/// A response: status, headers (lower-case names), body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `data:` payloads of a server-sent event stream.
    pub fn events(&self) -> Vec<String> {
        self.text()
            .lines()
            .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
            .map(str::to_string)
            .collect()
    }
}

/// One HTTP/1.1 request (`Connection: close`), the whole response read back (chunked bodies decoded).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<(&str, Vec<u8>)>,
    headers: &[(&str, &str)],
) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    let body = match body {
        Some((kind, bytes)) => {
            head.push_str(&format!("Content-Type: {kind}\r\nContent-Length: {}\r\n", bytes.len()));
            bytes
        }
        None => Vec::new(),
    };
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("write");
    // The server may answer (413, 401) before reading a large body and close: ignore a failed write.
    let _ = stream.write_all(&body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    parse(&raw)
}

fn parse(raw: &[u8]) -> Response {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).expect("status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked")) {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(end) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..end]).trim(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            let start = end + 2;
            out.extend_from_slice(&rest[start..(start + size).min(rest.len())]);
            rest = &rest[(start + size + 2).min(rest.len())..];
        }
        body = out;
    }
    Response { status, headers, body }
}

/// The text the server answers for generated `ids`: the engine's decoding, less a trailing character cut in
/// the middle by `max_tokens` (its bytes decode to one replacement character, not the model's text).
pub fn answer_text(engine: &Engine<Selected>, ids: &[u32]) -> String {
    let mut text = engine.decode(ids).expect("decode");
    if text.ends_with('\u{FFFD}') && ids.last().is_some_and(|&t| engine.decode(&[t]).expect("decode") == "\u{FFFD}") {
        text.pop();
    }
    text
}
