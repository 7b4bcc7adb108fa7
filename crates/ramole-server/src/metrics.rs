//! What `/metrics` reports, in Prometheus' text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use ramole_batch::SchedulerStats;

/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS: [f64; 13] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// A Prometheus histogram of seconds.
#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (c, &le) in self.counts.iter_mut().zip(&BUCKETS) {
            if secs <= le {
                *c += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (c, le) in self.counts.iter().zip(BUCKETS) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
            self.count, self.sum, self.count
        );
    }
}

/// The process's memory, as Linux reports it (`/proc/self/status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessMemory {
    /// Resident set size now, bytes.
    pub resident: u64,
    /// The highest resident set size so far, bytes.
    pub peak: u64,
}

/// The process's resident memory now and at its peak; `None` where `/proc/self/status` does not say
/// (not Linux).
pub fn process_memory() -> Option<ProcessMemory> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    };
    Some(ProcessMemory { resident: field("VmRSS:")?, peak: field("VmHWM:")? })
}

/// The server's counters and gauges, shared by the HTTP handlers and the engine's thread.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: AtomicU64,
    queued: AtomicU64,
    running: AtomicU64,
    in_flight: AtomicU64,
    tokens: AtomicU64,
    /// f64 bits: tokens per second over the last engine steps.
    tokens_per_sec: AtomicU64,
    adapter_hits: AtomicU64,
    adapter_misses: AtomicU64,
    adapters_resident: AtomicU64,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    engine: Mutex<SchedulerStats>,
    ttft: Mutex<Histogram>,
    latency: Mutex<Histogram>,
}

impl Metrics {
    /// A request arrived.
    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// A request failed with an error of `kind`.
    pub fn error(&self, kind: &'static str) {
        if let Ok(mut e) = self.errors.lock() {
            *e.entry(kind).or_default() += 1;
        }
    }

    /// Requests accepted and not yet answered.
    pub fn set_in_flight(&self, n: usize) {
        self.in_flight.store(n as u64, Ordering::Relaxed);
    }

    /// The engine's state after a step: queued and running rows, tokens produced in `secs`.
    pub fn step(&self, queued: usize, running: usize, tokens: usize, secs: f64) {
        self.queued.store(queued as u64, Ordering::Relaxed);
        self.running.store(running as u64, Ordering::Relaxed);
        self.tokens.fetch_add(tokens as u64, Ordering::Relaxed);
        if secs > 0.0 && tokens > 0 {
            let now = tokens as f64 / secs;
            let old = f64::from_bits(self.tokens_per_sec.load(Ordering::Relaxed));
            let smoothed = if old > 0.0 { 0.8 * old + 0.2 * now } else { now };
            self.tokens_per_sec.store(smoothed.to_bits(), Ordering::Relaxed);
        } else if running == 0 {
            self.tokens_per_sec.store(0f64.to_bits(), Ordering::Relaxed);
        }
    }

    /// Where the engine's time went so far.
    pub fn engine(&self, stats: SchedulerStats) {
        if let Ok(mut e) = self.engine.lock() {
            *e = stats;
        }
    }

    /// Adapter cache figures.
    pub fn adapters(&self, hits: u64, misses: u64, resident: usize) {
        self.adapter_hits.store(hits, Ordering::Relaxed);
        self.adapter_misses.store(misses, Ordering::Relaxed);
        self.adapters_resident.store(resident as u64, Ordering::Relaxed);
    }

    /// Time to the first token of a request.
    pub fn first_token(&self, secs: f64) {
        if let Ok(mut h) = self.ttft.lock() {
            h.observe(secs);
        }
    }

    /// A request's whole time, arrival to last token.
    pub fn finished(&self, secs: f64) {
        if let Ok(mut h) = self.latency.lock() {
            h.observe(secs);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        metric("ramole_requests_total", "counter", "Requests received.", get(&self.requests).to_string());
        metric("ramole_queue_depth", "gauge", "Requests waiting for a row.", get(&self.queued).to_string());
        metric("ramole_running_rows", "gauge", "Rows in the running batch.", get(&self.running).to_string());
        metric(
            "ramole_in_flight",
            "gauge",
            "Requests accepted and not yet answered.",
            get(&self.in_flight).to_string(),
        );
        metric("ramole_generated_tokens_total", "counter", "Tokens generated.", get(&self.tokens).to_string());
        let tps = f64::from_bits(get(&self.tokens_per_sec));
        metric("ramole_tokens_per_second", "gauge", "Generation throughput over the last steps.", format!("{tps:.3}"));
        metric(
            "ramole_adapter_cache_hits_total",
            "counter",
            "Adapters found loaded.",
            get(&self.adapter_hits).to_string(),
        );
        metric(
            "ramole_adapter_cache_misses_total",
            "counter",
            "Adapters loaded from disk on demand.",
            get(&self.adapter_misses).to_string(),
        );
        metric("ramole_adapters_resident", "gauge", "Adapters loaded now.", get(&self.adapters_resident).to_string());
        let engine = self.engine.lock().map(|e| *e).unwrap_or_default();
        for (name, help, value) in [
            ("ramole_prefill_passes_total", "Prefill forward passes (chunks).", engine.prefill_passes.to_string()),
            ("ramole_prefill_tokens_total", "Prompt tokens prefilled.", engine.prefill_tokens.to_string()),
            ("ramole_prefill_seconds_total", "Seconds in prefill passes.", format!("{:.6}", engine.prefill_secs)),
            ("ramole_decode_steps_total", "Decoding steps (one forward pass each).", engine.decode_steps.to_string()),
            ("ramole_decode_rows_total", "Rows of all decoding steps.", engine.decode_rows.to_string()),
            ("ramole_decode_seconds_total", "Seconds in decoding steps.", format!("{:.6}", engine.decode_secs)),
            (
                "ramole_lora_state_seconds_total",
                "Seconds building per-row LoRA states.",
                format!("{:.6}", engine.lora_secs),
            ),
        ] {
            metric(name, "counter", help, value);
        }
        let _ =
            writeln!(out, "# HELP ramole_errors_total Failed requests by kind.\n# TYPE ramole_errors_total counter");
        if let Ok(errors) = self.errors.lock() {
            for (kind, n) in errors.iter() {
                let _ = writeln!(out, "ramole_errors_total{{kind=\"{kind}\"}} {n}");
            }
        }
        if let Ok(h) = self.ttft.lock() {
            h.render(&mut out, "ramole_time_to_first_token_seconds", "Arrival to first token.");
        }
        if let Ok(h) = self.latency.lock() {
            h.render(&mut out, "ramole_request_latency_seconds", "Arrival to last token.");
        }
        if let Some(memory) = process_memory() {
            let _ = writeln!(
                out,
                "# HELP process_resident_memory_bytes Resident memory size in bytes.\n\
                 # TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}",
                memory.resident
            );
        }
        out
    }
}
