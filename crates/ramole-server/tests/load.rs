//! A load test, loopback only and bounded in count and time: 64 concurrent clients with mixed adapters
//! (every answer equal to the engine's static-batch greedy answer: none lost, none wrong), adapters
//! uploaded and deleted while it runs, then an overload that gets 429s.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{Running, request, setup};
use ramole_batch::{Request, RequestInput, RunOptions, Sampling};
use ramole_mole::RowRequest;
use ramole_server::ServeConfig;
use serde_json::json;

const CLIENTS: usize = 64;

#[test]
fn sixty_four_concurrent_clients_get_their_own_answers_while_adapters_change() {
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
            engine.decode(&ids).expect("decode")
        })
        .collect();
    drop(reference);

    let config = ServeConfig { model_name: "tiny".into(), max_batch: 8, max_queue: CLIENTS, ..Default::default() };
    let server = Running::start(common::ramole(&model, &pool), config);
    let addr = server.addr;
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
