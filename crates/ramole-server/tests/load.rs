//! A load test, loopback only and bounded in count and time: 64 concurrent clients with mixed adapters
//! (every answer equal to the engine's static-batch greedy answer: none lost, none wrong; prompts
//! prefilled in chunks between decoding steps), adapters uploaded and deleted while it runs, memory
//! bounded, then an overload that gets 429s.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{Running, request, setup};
use ramole_batch::{Request, RequestInput, RunOptions, Sampling};
use ramole_mole::RowRequest;
use ramole_server::ServeConfig;
use serde_json::json;

const CLIENTS: usize = 64;

/// The tests of this file run one at a time: the memory check reads the whole process's size.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn sixty_four_concurrent_clients_get_their_own_answers_while_adapters_change() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let tmp = tempfile::tempdir().expect("tmp");
    let (model, pool) = setup(tmp.path());
    let models = ["tiny", "a0", "a1", "a2", "a3"];
    let prompt = |i: usize| format!("Request {i}: plural of mouse is");
    let budget = |i: usize| 4 + i % 9;

    // What `ramole batch` answers: every request in one static batch.
    let reference = common::ramole(&model, &pool);
    let engine = reference.engine();
    let requests: Vec<Request> = (0..CLIENTS)
        .map(|i| Request {
            name: i.to_string(),
            input: RequestInput::Prompt(prompt(i)),
            row: RowRequest {
                adapters: match models[i % models.len()] {
                    "tiny" => Vec::new(),
                    a => vec![(a.to_string(), 1.0)],
                },
                composition: Default::default(),
            },
            max_new_tokens: budget(i),
            sampling: Sampling::Greedy,
        })
        .collect();
    let eos = engine.config().eos_token_ids.clone();
    let expected: Vec<String> = engine
        .run(&requests, RunOptions::default())
        .into_iter()
        .map(|o| {
            let ids: Vec<u32> = o.expect("runs").new_tokens.into_iter().filter(|t| !eos.contains(t)).collect();
            common::answer_text(engine, &ids)
        })
        .collect();
    drop(reference);

    // Prompts of ~30 tokens in groups of up to 8 rows, 4 columns per step: each group's prefill spans
    // several steps, the running rows decoding between them.
    let config = ServeConfig {
        model_name: "tiny".into(),
        max_batch: 8,
        max_queue: CLIENTS,
        prefill_chunk: 32,
        adapter_roots: vec![tmp.path().to_path_buf()],
        ..Default::default()
    };
    let server = Running::start(common::ramole(&model, &pool), config);
    let addr = server.addr;
    let resident = || -> f64 {
        let text = server.get("/metrics").text();
        let line = text.lines().find(|l| l.starts_with("process_resident_memory_bytes ")).expect("memory metric");
        line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("a number")
    };
    // Measured from after a first request: what the first forward pass allocates is not growth.
    let r = server.post("/v1/completions", &json!({"model": "a0", "prompt": prompt(0), "max_tokens": 2}));
    assert_eq!(r.status, 200, "{}", r.text());
    let before = resident();
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let body = json!({"model": models[i % models.len()], "prompt": prompt(i), "max_tokens": budget(i),
                              "stream": i % 4 == 0})
            .to_string();
            std::thread::spawn(move || {
                request(addr, "POST", "/v1/completions", Some(("application/json", body.into_bytes())), &[])
            })
        })
        .collect();
    // Meanwhile: an adapter uploaded, used and deleted.
    let extra = tmp.path().join("extra");
    common::copy_adapter(&common::fixture().join("adapters/a1"), &extra);
    let r = server.post("/v1/adapters", &json!({"name": "extra", "path": extra, "samples": ["x y z"]}));
    assert_eq!(r.status, 201, "{}", r.text());
    let r = server.post("/v1/completions", &json!({"model": "extra", "prompt": prompt(2), "max_tokens": budget(2)}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["choices"][0]["text"], expected[2], "extra is a copy of a1 (client 2's adapter)");
    assert_eq!(request(addr, "DELETE", "/v1/adapters/extra", None, &[]).status, 200);

    let mut statuses: HashMap<u16, usize> = HashMap::new();
    for (i, client) in clients.into_iter().enumerate() {
        let r = client.join().expect("client");
        *statuses.entry(r.status).or_default() += 1;
        assert_eq!(r.status, 200, "client {i}: {}", r.text());
        let text: String = if i % 4 == 0 {
            let events = r.events();
            assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "client {i}");
            events[..events.len() - 1]
                .iter()
                .filter_map(|e| serde_json::from_str::<serde_json::Value>(e).ok())
                .filter_map(|c| c["choices"][0]["text"].as_str().map(String::from))
                .collect()
        } else {
            r.json()["choices"][0]["text"].as_str().expect("text").to_string()
        };
        assert_eq!(text, expected[i], "client {i} ({})", models[i % models.len()]);
    }
    assert!(started.elapsed() < Duration::from_secs(300), "bounded in time");
    assert_eq!(statuses.get(&200), Some(&CLIENTS));
    // Bounded memory: what the load added (8 rows of cache, 64 queued requests, 64 client threads in
    // this process) is far below this; a leak per request or token would not be.
    let grown = (resident() - before) / f64::from(1 << 20);
    assert!(grown < 256.0, "the process grew by {grown:.0} MiB under load");
    server.stop();

    // Overload: 1 row and 2 queue places for 24 clients at once: 429s, and the rest answered.
    let config = ServeConfig { model_name: "tiny".into(), max_batch: 1, max_queue: 2, ..Default::default() };
    let server = Running::start(common::ramole(&model, &pool), config);
    let addr = server.addr;
    let clients: Vec<_> = (0..24)
        .map(|i| {
            let body = json!({"model": "a0", "prompt": prompt(i), "max_tokens": 30}).to_string();
            std::thread::spawn(move || {
                request(addr, "POST", "/v1/completions", Some(("application/json", body.into_bytes())), &[])
            })
        })
        .collect();
    let statuses: Vec<u16> = clients.into_iter().map(|c| c.join().expect("client").status).collect();
    let busy = statuses.iter().filter(|&&s| s == 429).count();
    assert!(busy > 0 && statuses.iter().all(|&s| s == 200 || s == 429), "{statuses:?}");
    assert!(statuses.iter().filter(|&&s| s == 200).count() >= 3, "{statuses:?}");
}

#[test]
fn the_bench_load_generator_measures_every_request_under_both_batchings() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    use ramole_server::bench::{Background, Load, LoadRequest, run_load};
    use ramole_server::{Batching, Server};

    let tmp = tempfile::tempdir().expect("tmp");
    let (model, pool) = setup(tmp.path());
    let requests: Vec<LoadRequest> = (0..6)
        .map(|i| LoadRequest {
            model: ["tiny", "a0", "a1"][i % 3].to_string(),
            prompt: format!("Request {i}: plural of mouse is"),
            max_tokens: 3 + i,
        })
        .collect();
    let mut tokens = Vec::new();
    for batching in [Batching::Continuous, Batching::Static] {
        let config = ServeConfig { model_name: "tiny".into(), max_batch: 4, batching, ..Default::default() };
        let server =
            Background::start(Server::new(common::ramole(&model, &pool), config).expect("server")).expect("serving");
        let load = Load { clients: 6, requests_per_client: 2, requests: requests.clone(), api_key: None };
        let report = run_load(server.addr(), &load);
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        assert_eq!(report.samples.len(), 12);
        for s in &report.samples {
            assert!(s.completion_tokens >= 1 && s.completion_tokens <= 8, "{s:?}");
            assert!(s.ttft.is_none_or(|t| t <= s.latency), "{s:?}");
        }
        assert!(report.tokens_per_sec() > 0.0 && report.latency(0.99) >= report.latency(0.5));
        let mut counts: Vec<u64> = report.samples.iter().map(|s| s.completion_tokens).collect();
        counts.sort_unstable();
        tokens.push(counts);
        server.stop().expect("stops");
    }
    assert_eq!(tokens[0], tokens[1], "the same greedy answers, whichever batching");
}
