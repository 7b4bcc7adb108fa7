//! The server as an OpenAI client uses it, on the tiny Llama: completions, chat, streaming, `model` = an
//! adapter, `"ramole"` routing and explicit mixtures, each answer equal to the engine's greedy tokens;
//! adapters uploaded and deleted while serving; auth, back-pressure, limits and metrics.

mod common;

use common::{Running, request, setup};
use ramole_batch::{Request, RequestInput, RunOptions, Sampling};
use ramole_core::lora::Composition;
use ramole_mole::RowRequest;
use ramole_server::ServeConfig;
use serde_json::json;

fn config() -> ServeConfig {
    ServeConfig { model_name: "tiny".into(), ..Default::default() }
}

/// What the engine alone answers (greedy, static batch of one): the reference for the server.
fn expected(
    model: &std::path::Path,
    pool: &std::path::Path,
    prompt: &str,
    adapters: &[(&str, f32)],
    composition: Composition,
    n: usize,
) -> String {
    let ramole = common::ramole(model, pool);
    let engine = ramole.engine();
    let request = Request {
        name: "x".into(),
        input: RequestInput::Prompt(prompt.into()),
        row: RowRequest { adapters: adapters.iter().map(|(a, w)| (a.to_string(), *w)).collect(), composition },
        max_new_tokens: n,
        sampling: Sampling::Greedy,
    };
    let out = engine.run(&[request], RunOptions::default()).pop().expect("one").expect("runs");
    let eos = &engine.config().eos_token_ids;
    let ids: Vec<u32> = out.new_tokens.into_iter().filter(|t| !eos.contains(t)).collect();
    common::answer_text(engine, &ids)
}

#[test]
fn completions_chat_streams_and_routing_answer_as_the_engine_does() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (model, pool) = setup(tmp.path());
    let server = Running::start(common::ramole(&model, &pool), config());

    let models = server.get("/v1/models").json();
    let ids: Vec<&str> = models["data"].as_array().expect("list").iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, ["tiny", "ramole", "a0", "a1", "a2", "a3"]);

    let prompt = "Plural of mouse:";
    // The base model, then one adapter: the engine's greedy answer, with the routing used.
    let r = server.post("/v1/completions", &json!({"model": "tiny", "prompt": prompt, "max_tokens": 6}));
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["choices"][0]["text"], expected(&model, &pool, prompt, &[], Composition::Single, 6));
    assert_eq!(body["routing"], json!([]));
    assert_eq!(body["usage"]["prompt_tokens"], prompt.len(), "one token per byte");
    // Issue 24, 5: which weight format served the answer, here and in /v1/models.
    let weights = body["usage"]["weights"].as_str().expect("usage.weights").to_string();
    assert!(["dense", "quantized", "quantized-int8"].contains(&weights.as_str()), "{weights}");
    assert!(models["data"].as_array().expect("list").iter().all(|m| m["weights"] == weights.as_str()), "{models}");
    let r = server.post("/v1/completions", &json!({"model": "a1", "prompt": prompt, "max_tokens": 6})).json();
    assert_eq!(r["choices"][0]["text"], expected(&model, &pool, prompt, &[("a1", 1.0)], Composition::Single, 6));
    assert_eq!(r["routing"], json!([{"lora": "a1", "score": null, "weight": 1.0}]));
    assert_eq!(r["choices"][0]["finish_reason"], "length");
    assert_eq!(r["usage"]["completion_tokens"], 6);

    // RAMoLE routing: the top-2 by cosine, a uniform mixture; the prompt resembles a0's samples.
    let r = server.post("/v1/completions", &json!({"model": "ramole", "prompt": prompt, "max_tokens": 5, "top_k": 2}));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = r.json();
    let routing = r["routing"].as_array().expect("routing");
    assert_eq!(routing.len(), 2);
    assert_eq!(routing[0]["lora"], "a0", "{routing:?}");
    assert!(routing.iter().all(|l| l["score"].as_f64().is_some() && l["weight"] == 0.5));
    let names: Vec<&str> = routing.iter().filter_map(|l| l["lora"].as_str()).collect();
    let mix = [(names[0], 0.5), (names[1], 0.5)];
    assert_eq!(r["choices"][0]["text"], expected(&model, &pool, prompt, &mix, Composition::Mixture, 5));
    let r = server
        .post(
            "/v1/completions",
            &json!({"model": "ramole", "prompt": prompt, "max_tokens": 3, "strategy": "selection"}),
        )
        .json();
    assert_eq!(r["routing"].as_array().map(Vec::len), Some(1));

    // An explicit weighted mixture through the extension fields.
    let body = json!({"model": "tiny", "prompt": prompt, "max_tokens": 5,
                      "adapters": [{"name": "a0", "weight": 0.6}, {"name": "a1", "weight": 0.4}], "composition": "fusion"});
    let r = server.post("/v1/completions", &body).json();
    assert_eq!(
        r["routing"],
        json!([{"lora": "a0", "score": null, "weight": 0.6}, {"lora": "a1", "score": null, "weight": 0.4}])
    );
    let fused = expected(&model, &pool, prompt, &[("a0", 0.6), ("a1", 0.4)], Composition::Fusion, 5);
    assert_eq!(r["choices"][0]["text"], fused);
    let body = json!({"model": "tiny", "prompt": prompt, "max_tokens": 5,
                      "adapters": [{"name": "a0", "weight": 0.6}, {"name": "a2", "weight": 0.4}]});
    let r = server.post("/v1/completions", &body).json();
    let mixed = expected(&model, &pool, prompt, &[("a0", 0.6), ("a2", 0.4)], Composition::Mixture, 5);
    assert_eq!(r["choices"][0]["text"], mixed, "a mixture by default");
    let body = json!({"model": "tiny", "prompt": prompt, "adapters": [{"name": "a0"}, {"name": "a2"}], "composition": "fusion"});
    let r = server.post("/v1/completions", &body);
    assert_eq!(r.status, 400, "fusion of adapters of different ranks: {}", r.text());
    assert!(r.text().contains("fusion needs adapters of equal rank"), "{}", r.text());

    // Chat: the ChatML prompt of the conversation; routing reads the last user message.
    let messages = json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 7 + 8?"}]);
    let r = server
        .post("/v1/chat/completions", &json!({"model": "ramole", "messages": messages, "max_tokens": 4, "top_k": 1}));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = r.json();
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(r["choices"][0]["message"]["role"], "assistant");
    assert_eq!(r["routing"][0]["lora"], "a1");
    let chat_prompt = ramole_models::tokenizer::chatml_messages(&[("system", "Be brief."), ("user", "What is 7 + 8?")]);
    let mix = [("a1", 1.0)];
    assert_eq!(
        r["choices"][0]["message"]["content"],
        expected(&model, &pool, &chat_prompt, &mix, Composition::Mixture, 4)
    );

    // Streaming: the routing in the first chunk, the same text as without streaming, usage, [DONE].
    let plain = server.post("/v1/completions", &json!({"model": "a2", "prompt": prompt, "max_tokens": 8})).json();
    let r = server.post(
        "/v1/completions",
        &json!({"model": "a2", "prompt": prompt, "max_tokens": 8, "stream": true, "stream_options": {"include_usage": true}}),
    );
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").is_some_and(|c| c.starts_with("text/event-stream")));
    let events = r.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<serde_json::Value> =
        events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).expect("a JSON chunk")).collect();
    assert_eq!(chunks[0]["routing"], json!([{"lora": "a2", "score": null, "weight": 1.0}]));
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
    assert_eq!(text, plain["choices"][0]["text"].as_str().expect("text"));
    assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "length"));
    assert_eq!(chunks.last().expect("usage")["usage"]["completion_tokens"], 8);
    let r = server.post(
        "/v1/chat/completions",
        &json!({"model": "a2", "messages": [{"role": "user", "content": "hi"}],
                                                        "max_tokens": 4, "stream": true}),
    );
    let events = r.events();
    let first: serde_json::Value = serde_json::from_str(&events[0]).expect("chunk");
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");

    // A stop string ends the answer before it.
    let full = plain["choices"][0]["text"].as_str().expect("text").to_string();
    if let Some((at, c)) = full.char_indices().find(|&(i, c)| i > 0 && !c.is_whitespace() && !full[..i].contains(c)) {
        let stop = c.to_string();
        let r = server
            .post("/v1/completions", &json!({"model": "a2", "prompt": prompt, "max_tokens": 8, "stop": stop}))
            .json();
        assert_eq!(r["choices"][0]["text"], full[..at], "stop {stop:?} in {full:?}");
        assert_eq!(r["choices"][0]["finish_reason"], "stop");
    }

    // Bad requests: a typed error naming what is wrong; the server goes on.
    for (body, status, needle) in [
        (json!({"model": "nope", "prompt": "x"}), 404, "model `nope` does not exist"),
        (json!({"model": "tiny"}), 400, "prompt"),
        (json!({"model": "tiny", "prompt": "x", "n": 2}), 400, "answers per prompt"),
        (json!({"model": "tiny", "prompt": "x", "temperature": 9}), 400, "temperature"),
        (json!({"model": "tiny", "prompt": "x", "max_tokens": 100000}), 400, "exceeds the context"),
        (json!({"model": "tiny", "prompt": "x", "adapters": [{"name": "zz"}]}), 404, "no adapter `zz`"),
        (json!({"model": "tiny", "prompt": "x", "composition": "mixture"}), 400, "goes with `adapters`"),
        (json!({"model": "ramole", "prompt": "x", "top_k": 0}), 400, "top_k"),
        (json!({"model": "ramole", "prompt": "x", "strategy": "magic"}), 400, "strategy"),
    ] {
        let r = server.post("/v1/completions", &body);
        assert_eq!(r.status, status, "{body}: {}", r.text());
        let message = r.json()["error"]["message"].as_str().unwrap_or_default().to_string();
        assert!(message.contains(needle), "{body}: {message}");
    }
    let r = request(server.addr, "POST", "/v1/completions", Some(("application/json", b"{not json".to_vec())), &[]);
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"].as_str().is_some_and(|m| m.contains("request body")));
    assert_eq!(server.post("/v1/completions", &json!({"model": "tiny", "prompt": "x", "max_tokens": 2})).status, 200);
    server.stop();
}

#[test]
fn adapters_come_and_go_while_serving_and_the_pool_on_disk_follows() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (model, pool) = setup(tmp.path());
    let roots = ServeConfig { adapter_roots: vec![tmp.path().to_path_buf()], ..config() };
    let server = Running::start(common::ramole(&model, &pool), roots);
    let samples = json!(["Spell it backwards: dog", "Spell it backwards: cat"]);

    // A folder on the server.
    let folder = tmp.path().join("outside").join("rev");
    common::copy_adapter(&common::fixture().join("adapters/a3"), &folder);
    let r = server.post("/v1/adapters", &json!({"name": "rev", "path": folder, "samples": samples}));
    assert_eq!(r.status, 201, "{}", r.text());
    let r =
        server.post("/v1/completions", &json!({"model": "rev", "prompt": "Spell it backwards: cow", "max_tokens": 3}));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = server.post(
        "/v1/completions",
        &json!({"model": "ramole", "prompt": "Spell it backwards: cow", "max_tokens": 2, "top_k": 1}),
    );
    assert_eq!(r.json()["routing"][0]["lora"], "rev");

    // Bad uploads: a 4xx naming the problem; the pool (served and on disk) unchanged.
    let entries = || {
        let mut v: Vec<String> = std::fs::read_dir(pool.join("entries"))
            .expect("entries")
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        v.sort();
        v
    };
    let before = entries();
    let broken = tmp.path().join("broken");
    common::copy_adapter(&common::fixture().join("adapters/a0"), &broken);
    std::fs::write(broken.join("adapter_model.safetensors"), b"not safetensors").expect("write");
    for (body, status, needle) in [
        (json!({"name": "bad", "path": broken, "samples": samples}), 400, "adapter `bad`"),
        (json!({"name": "rev", "path": folder, "samples": samples}), 409, "already"),
        (json!({"name": "empty", "path": folder, "samples": []}), 400, "sample"),
        (json!({"name": "../x", "path": folder, "samples": samples}), 400, "name"),
        (json!({"name": "gone", "path": tmp.path().join("nothing"), "samples": samples}), 400, "adapter roots"),
    ] {
        let r = server.post("/v1/adapters", &body);
        assert_eq!(r.status, status, "{body}: {}", r.text());
        assert!(r.text().contains(needle), "{body}: {}", r.text());
        assert!(!r.text().contains(pool.to_string_lossy().as_ref()), "no server path in an error: {}", r.text());
    }
    assert_eq!(entries(), before);
    assert_eq!(server.get("/v1/adapters").json()["data"].as_array().map(Vec::len), Some(5));

    // A multipart upload of the files themselves: moved into the pool's adapters/ once valid.
    let r = upload(&server, "uploaded", &samples, &common::fixture().join("adapters/a2"));
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(pool.join("adapters/uploaded/adapter_model.safetensors").is_file());
    let leftovers = std::fs::read_dir(pool.join("adapters")).expect("dir").filter_map(Result::ok);
    assert!(leftovers.into_iter().all(|e| !e.file_name().to_string_lossy().starts_with(".upload")), "staging removed");
    let r = server.post("/v1/completions", &json!({"model": "uploaded", "prompt": "hi", "max_tokens": 3}));
    assert_eq!(r.status, 200, "{}", r.text());

    // Delete: gone from the API and the pool; a second delete is a 404.
    let r = request(server.addr, "DELETE", "/v1/adapters/rev", None, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(server.post("/v1/completions", &json!({"model": "rev", "prompt": "x", "max_tokens": 1})).status, 404);
    assert_eq!(request(server.addr, "DELETE", "/v1/adapters/rev", None, &[]).status, 404);
    server.stop();

    // A restarted server serves the pool as it was left.
    let server = Running::start(common::ramole(&model, &pool), config());
    let ids: Vec<String> = server.get("/v1/models").json()["data"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|m| m["id"].as_str().map(String::from))
        .collect();
    assert_eq!(ids, ["tiny", "ramole", "a0", "a1", "a2", "a3", "uploaded"]);
}

/// Uploads the adapter in `dir` as a multipart form (`name`, `samples`, the two files).
fn upload(server: &Running, name: &str, samples: &serde_json::Value, dir: &std::path::Path) -> common::Response {
    let boundary = "XyZ123boundary";
    let mut body = Vec::new();
    let mut part = |name: &str, file: Option<&str>, bytes: &[u8]| {
        body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"").as_bytes());
        if let Some(f) = file {
            body.extend_from_slice(format!("; filename=\"{f}\"\r\nContent-Type: application/octet-stream").as_bytes());
        }
        body.extend_from_slice(b"\r\n\r\n");
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    };
    part("name", None, name.as_bytes());
    part("samples", None, samples.to_string().as_bytes());
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        part("file", Some(f), &std::fs::read(dir.join(f)).expect("read"));
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let kind = format!("multipart/form-data; boundary={boundary}");
    request(server.addr, "POST", "/v1/adapters", Some((&kind, body)), &[])
}

/// Issue 25, 4: a deleted upload's files go with it, so its name can be uploaded again; an adapter
/// registered by path keeps its folder; a folder no entry stands for gives way to an upload; staging and
/// trash folders of a process that died are swept when a server starts.
#[test]
fn deleted_uploads_free_their_name_and_dead_uploads_are_swept() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (model, pool) = setup(tmp.path());
    let config = || ServeConfig { adapter_roots: vec![tmp.path().join("outside")], ..config() };
    std::fs::create_dir_all(tmp.path().join("outside")).expect("mkdir");
    let adapters = pool.join("adapters");
    // What a server killed mid-upload (or mid-delete) leaves: folders of a process that no longer runs.
    for stale in [".upload-999999999-3", ".trash-x-999999999-17"] {
        std::fs::create_dir_all(adapters.join(stale)).expect("mkdir");
        std::fs::write(adapters.join(stale).join("adapter_model.safetensors"), b"partial").expect("write");
    }
    std::fs::create_dir_all(adapters.join(".upload-1-0")).expect("a live process's staging (pid 1)");
    // An orphan: a folder under a name no pool entry has.
    common::copy_adapter(&common::fixture().join("adapters/a0"), &adapters.join("orphan"));
    let server = Running::start(common::ramole(&model, &pool), config());
    let names = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&adapters)
            .expect("dir")
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| n.starts_with('.'))
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(), [".upload-1-0"], "dead processes' folders swept, a live one's kept");

    let samples = json!(["Spell it backwards: dog"]);
    let a2 = common::fixture().join("adapters/a2");
    for round in 0..2 {
        let r = upload(&server, "x", &samples, &a2);
        assert_eq!(r.status, 201, "round {round}: {}", r.text());
        assert_eq!(upload(&server, "x", &samples, &a2).status, 409, "round {round}: a live name is taken");
        let r = request(server.addr, "DELETE", "/v1/adapters/x", None, &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(!adapters.join("x").exists(), "round {round}: the upload's files are deleted with it");
    }
    let r = upload(&server, "orphan", &samples, &a2);
    assert_eq!(r.status, 201, "an orphaned folder gives way: {}", r.text());
    let r = server.post("/v1/completions", &json!({"model": "orphan", "prompt": "hi", "max_tokens": 2}));
    assert_eq!(r.status, 200, "{}", r.text());

    // An adapter registered by its path is not the pool's to delete.
    let outside = tmp.path().join("outside").join("mine");
    common::copy_adapter(&a2, &outside);
    let r = server.post("/v1/adapters", &json!({"name": "mine", "path": outside, "samples": samples}));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(request(server.addr, "DELETE", "/v1/adapters/mine", None, &[]).status, 200);
    assert!(outside.join("adapter_model.safetensors").is_file(), "a folder outside the pool stays");
    assert_eq!(names(), [".upload-1-0"], "no trash left behind");
}

#[test]
fn auth_back_pressure_limits_disconnects_and_metrics() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (model, pool) = setup(tmp.path());
    let config =
        ServeConfig { api_key: Some("sesame".into()), max_batch: 1, max_queue: 1, max_body_bytes: 4096, ..config() };
    let server = Running::start(common::ramole(&model, &pool), config);
    let auth = [("Authorization", "Bearer sesame")];
    let post = |body: &serde_json::Value, headers: &[(&str, &str)]| {
        request(
            server.addr,
            "POST",
            "/v1/completions",
            Some(("application/json", body.to_string().into_bytes())),
            headers,
        )
    };
    let small = json!({"model": "tiny", "prompt": "hello", "max_tokens": 2});
    assert_eq!(post(&small, &[]).status, 401);
    assert_eq!(post(&small, &[("Authorization", "Bearer wrong")]).status, 401);
    assert_eq!(post(&small, &auth).status, 200);
    assert_eq!(server.get("/health").status, 200, "health needs no key");
    assert_eq!(server.get("/v1/models").status, 401);

    // Over the body limit: 413, with the JSON error body every error has (issue 25, 9), counted below.
    let big = json!({"model": "tiny", "prompt": "x".repeat(8000)});
    let r = post(&big, &auth);
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["type"], "request_too_large_error", "{}", r.text());
    let r = request(
        server.addr,
        "POST",
        "/v1/adapters",
        Some(("multipart/form-data; boundary=b", vec![b'x'; 8000])),
        &auth,
    );
    assert_eq!(r.status, 413, "an upload over the limit: {}", r.text());

    // 12 clients at once on 1 row + 1 queue place: some are told to come back (429 + Retry-After),
    // the others are answered.
    let long = json!({"model": "tiny", "prompt": "hello", "max_tokens": 40});
    let addr = server.addr;
    let handles: Vec<_> = (0..12)
        .map(|_| {
            let body = long.to_string().into_bytes();
            std::thread::spawn(move || {
                request(
                    addr,
                    "POST",
                    "/v1/completions",
                    Some(("application/json", body)),
                    &[("Authorization", "Bearer sesame")],
                )
            })
        })
        .collect();
    let responses: Vec<_> = handles.into_iter().map(|h| h.join().expect("client")).collect();
    let ok = responses.iter().filter(|r| r.status == 200).count();
    let busy: Vec<_> = responses.iter().filter(|r| r.status == 429).collect();
    assert!(
        ok >= 1 && !busy.is_empty() && ok + busy.len() == 12,
        "{:?}",
        responses.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(busy.iter().all(|r| r.header("retry-after") == Some("1")));
    let answers: Vec<_> =
        responses.iter().filter(|r| r.status == 200).map(|r| r.json()["choices"][0]["text"].clone()).collect();
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "greedy answers agree");

    // A streaming client that leaves: its row leaves the batch.
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        let body = json!({"model": "tiny", "prompt": "hello", "max_tokens": 100, "stream": true}).to_string();
        let head = format!(
            "POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sesame\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(head.as_bytes()).expect("write");
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0);
    }
    let metrics = |name: &str| -> f64 {
        let text = request(addr, "GET", "/metrics", None, &auth).text();
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let t = std::time::Instant::now();
    while (metrics("ramole_running_rows") != 0.0 || metrics("ramole_in_flight") != 0.0) && t.elapsed().as_secs() < 30 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(metrics("ramole_running_rows"), 0.0);
    assert_eq!(metrics("ramole_in_flight"), 0.0);
    let text = request(addr, "GET", "/metrics", None, &auth).text();
    for needle in [
        "ramole_requests_total",
        "ramole_errors_total{kind=\"rate_limit_error\"}",
        "ramole_errors_total{kind=\"authentication_error\"}",
        "ramole_errors_total{kind=\"request_too_large_error\"}",
        "ramole_time_to_first_token_seconds_bucket{le=\"+Inf\"}",
        "ramole_request_latency_seconds_count",
        "ramole_adapter_cache_hits_total",
        "ramole_queue_depth",
        "ramole_tokens_per_second",
    ] {
        assert!(text.contains(needle), "{needle} in\n{text}");
    }
    assert!(metrics("ramole_generated_tokens_total") >= 42.0);
}

#[test]
fn requests_past_the_time_limit_get_408_and_adapters_load_on_demand_within_the_residency_limit() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (model, pool) = setup(tmp.path());
    let mut ramole = common::ramole(&model, &pool);
    ramole.set_max_resident(Some(2));
    assert_eq!(ramole.residency().resident, 2);
    let server = Running::start(ramole, ServeConfig { ..config() });
    for name in ["a0", "a1", "a2", "a3", "a0", "a0"] {
        let r = server.post("/v1/completions", &json!({"model": name, "prompt": "hi", "max_tokens": 2}));
        assert_eq!(r.status, 200, "{name}: {}", r.text());
    }
    let text = server.get("/metrics").text();
    let value = |name: &str| -> u64 {
        text.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().last()?.parse().ok()).unwrap_or(0)
    };
    assert_eq!(value("ramole_adapters_resident"), 2, "{text}");
    assert!(value("ramole_adapter_cache_misses_total") >= 3, "{text}");
    assert!(value("ramole_adapter_cache_hits_total") >= 1, "{text}");
    server.stop();

    let config = ServeConfig { request_timeout: std::time::Duration::from_millis(1), ..config() };
    let server = Running::start(common::ramole(&model, &pool), config);
    let r = server.post("/v1/completions", &json!({"model": "tiny", "prompt": "hi", "max_tokens": 50}));
    assert_eq!(r.status, 408, "{}", r.text());
    assert!(r.text().contains("limit"));
}

/// Issue 25, 7 and 1: text in a chat message never becomes a control token (the tiny tokenizer's `</s>`,
/// its end of sequence, written in a message stays four bytes, one token each, while a raw completion
/// prompt still parses it); a prompt that cannot fit the context is refused, naming the field, before it is
/// tokenized.
#[test]
fn chat_text_never_becomes_a_control_token_and_oversized_prompts_are_refused_before_tokenizing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (model, pool) = setup(tmp.path());
    let server = Running::start(common::ramole(&model, &pool), config());
    let forged = "x</s>y";
    let messages = json!([{"role": "user", "content": forged}]);
    let r = server.post("/v1/chat/completions", &json!({"model": "tiny", "messages": messages, "max_tokens": 1}));
    assert_eq!(r.status, 200, "{}", r.text());
    let chat_bytes = ramole_models::tokenizer::chatml_messages(&[("user", forged)]).len();
    assert_eq!(r.json()["usage"]["prompt_tokens"], chat_bytes, "one token per byte: `</s>` stayed text");
    let r = server.post("/v1/completions", &json!({"model": "tiny", "prompt": forged, "max_tokens": 1}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["usage"]["prompt_tokens"], 3, "a raw prompt parses `</s>` as one token");

    // Far beyond the context: refused at once, without tokenizing megabytes.
    let huge = "a".repeat(4 << 20);
    let start = std::time::Instant::now();
    let r = server.post("/v1/completions", &json!({"model": "tiny", "prompt": huge, "max_tokens": 1}));
    assert_eq!(r.status, 400, "{}", r.text());
    let body = r.json();
    assert_eq!(body["error"]["param"], "prompt", "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("context")), "{body}");
    let messages = json!([{"role": "user", "content": huge}]);
    let r = server.post("/v1/chat/completions", &json!({"model": "tiny", "messages": messages, "max_tokens": 1}));
    assert_eq!((r.status, r.json()["error"]["param"].clone()), (400, json!("messages")));
    assert!(start.elapsed() < std::time::Duration::from_secs(20), "refused without the work: {:?}", start.elapsed());
    assert_eq!(server.get("/health").status, 200);
}

/// Issue 25, 8: an adapter is registered by a server path only under a configured root (off by default),
/// symbolic links may not lead out of it, and every refusal reads the same, so a client cannot probe the
/// server's files.
#[test]
fn adapters_by_path_only_under_an_adapter_root_and_no_probing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (model, pool) = setup(tmp.path());
    let root = tmp.path().join("root");
    common::copy_adapter(&common::fixture().join("adapters/a2"), &root.join("good"));
    let samples = json!(["Spell it backwards: dog"]);
    let register = |server: &Running, name: &str, path: &std::path::Path| {
        server.post("/v1/adapters", &json!({"name": name, "path": path, "samples": samples}))
    };
    // Off by default.
    let server = Running::start(common::ramole(&model, &pool), config());
    let r = register(&server, "good", &root.join("good"));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("--adapter-root"), "{}", r.text());
    server.stop();

    let server =
        Running::start(common::ramole(&model, &pool), ServeConfig { adapter_roots: vec![root.clone()], ..config() });
    assert_eq!(register(&server, "good", &root.join("good")).status, 201);
    // Outside the root, missing, a file, a symlinked folder or file leading out: one answer for all.
    let outside = tmp.path().join("outside");
    common::copy_adapter(&common::fixture().join("adapters/a2"), &outside);
    std::os::unix::fs::symlink(&outside, root.join("link")).expect("symlink");
    std::fs::create_dir_all(root.join("half")).expect("mkdir");
    std::fs::copy(outside.join("adapter_config.json"), root.join("half/adapter_config.json")).expect("copy");
    std::os::unix::fs::symlink("/etc/passwd", root.join("half/adapter_model.safetensors")).expect("symlink");
    let mut bodies = Vec::new();
    for (name, path) in [
        ("out", outside.clone()),
        ("missing", root.join("nothing")),
        ("etc", std::path::PathBuf::from("/etc")),
        ("passwd", std::path::PathBuf::from("/etc/passwd")),
        ("link", root.join("link")),
        ("half", root.join("half")),
        ("dots", root.join("../outside")),
    ] {
        let r = register(&server, name, &path);
        assert_eq!(r.status, 400, "{name}: {}", r.text());
        bodies.push(r.json()["error"]["message"].clone());
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "every refusal reads the same: {bodies:?}");
    let listed = server.get("/v1/models").json().to_string();
    assert!(
        ["out", "missing", "etc", "passwd", "link", "half", "dots"]
            .iter()
            .all(|n| !listed.contains(&format!("\"{n}\"")))
    );
}

/// Issue 25, 3: a LoRA whose adapter stops loading (its file damaged on disk after it was registered) is
/// quarantined the first time a request needs it: routed traffic routes around it instead of failing, a
/// request naming it gets the reason, the API lists it no more, and registering it again brings it back.
#[test]
fn a_lora_that_stops_loading_is_quarantined_and_routed_around() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (model, pool) = setup(tmp.path());
    let mut ramole = common::ramole(&model, &pool);
    ramole.set_max_resident(Some(1));
    let server = Running::start(ramole, config());
    let r = server.post("/v1/completions", &json!({"model": "a1", "prompt": "What is 2 + 2?", "max_tokens": 1}));
    assert_eq!(r.status, 200, "{}", r.text());
    // a0 is not resident; its weights are damaged on disk.
    std::fs::write(pool.join("adapters/a0/adapter_model.safetensors"), b"garbage").expect("damage");
    let routed = json!({"model": "ramole", "prompt": "Plural of mouse:", "max_tokens": 2, "top_k": 1});
    for _ in 0..2 {
        let r = server.post("/v1/completions", &routed);
        assert_eq!(r.status, 200, "routed around the damaged LoRA: {}", r.text());
        let lora = r.json()["routing"][0]["lora"].clone();
        assert!(lora.is_string() && lora != "a0", "{lora}");
    }
    let r = server.post("/v1/completions", &json!({"model": "a0", "prompt": "Plural of mouse:", "max_tokens": 1}));
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.text().contains("quarantined"), "{}", r.text());
    let ids = server.get("/v1/models").json().to_string();
    assert!(!ids.contains("\"a0\"") && ids.contains("\"a1\""), "{ids}");
    // Deleted and registered again with good files: served again.
    assert_eq!(request(server.addr, "DELETE", "/v1/adapters/a0", None, &[]).status, 200);
    let r = upload(&server, "a0", &json!(["Plural of mouse:"]), &common::fixture().join("adapters/a0"));
    assert_eq!(r.status, 201, "{}", r.text());
    let r = server.post("/v1/completions", &json!({"model": "a0", "prompt": "Plural of mouse:", "max_tokens": 1}));
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Issue 25, 9: an error is counted once in `ramole_errors_total`, whether the HTTP side or the engine
/// refused the request, streamed or not.
#[test]
fn each_error_is_counted_once() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (model, pool) = setup(tmp.path());
    let server = Running::start(common::ramole(&model, &pool), config());
    let count = |kind: &str| -> u64 {
        let text = server.get("/metrics").text();
        let name = format!("ramole_errors_total{{kind=\"{kind}\"}}");
        text.lines()
            .find(|l| l.starts_with(&name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    // Refused by the engine (an adapter the pool does not hold), plain and streamed; refused by the HTTP side.
    let unknown =
        json!({"model": "tiny", "prompt": "x", "max_tokens": 1, "adapters": [{"name": "nope", "weight": 1.0}]});
    assert_eq!(server.post("/v1/completions", &unknown).status, 404);
    let mut streamed = unknown.clone();
    streamed["stream"] = json!(true);
    let _ = server.post("/v1/completions", &streamed);
    assert_eq!(server.post("/v1/completions", &json!({"model": "nope", "prompt": "x"})).status, 404);
    assert_eq!(count("not_found_error"), 3, "{}", server.get("/metrics").text());
}

/// Issue 25, 9: the API's own model names cannot be uploaded as adapters, and deleting an invalid name is a
/// 400 (or a 404), never a 500.
#[test]
fn reserved_and_invalid_adapter_names_are_client_errors() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (model, pool) = setup(tmp.path());
    let server = Running::start(common::ramole(&model, &pool), config());
    let a2 = common::fixture().join("adapters/a2");
    for name in ["ramole", "tiny"] {
        let r = upload(&server, name, &json!(["x"]), &a2);
        assert_eq!(r.status, 400, "{name}: {}", r.text());
        assert!(r.text().contains("reserved"), "{}", r.text());
    }
    let staging = std::fs::read_dir(pool.join("adapters")).expect("dir").filter_map(Result::ok);
    assert!(staging.into_iter().all(|e| !e.file_name().to_string_lossy().starts_with('.')), "no staging left");
    for (path, want) in
        [("/v1/adapters/..", [400, 404]), ("/v1/adapters/.hidden", [400, 400]), ("/v1/adapters/a%20b", [400, 400])]
    {
        let status = request(server.addr, "DELETE", path, None, &[]).status;
        assert!(want.contains(&status), "{path}: {status}");
    }
    assert_eq!(request(server.addr, "DELETE", "/v1/adapters/absent", None, &[]).status, 404);
    let ids = server.get("/v1/models").json()["data"].as_array().map(Vec::len);
    assert_eq!(ids, Some(6), "nothing was added or removed");
}

/// Issue 25, 9: a completion prompt may be token ids, as OpenAI's API allows; ids outside the vocabulary
/// and several prompts are clear 400s.
#[test]
fn token_id_prompts_are_served() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (model, pool) = setup(tmp.path());
    let server = Running::start(common::ramole(&model, &pool), config());
    let text = server.post("/v1/completions", &json!({"model": "a1", "prompt": "Plural of mouse:", "max_tokens": 4}));
    assert_eq!(text.status, 200, "{}", text.text());
    // The byte tokenizer: byte b is token b + 3.
    let ids: Vec<u32> = "Plural of mouse:".bytes().map(|b| u32::from(b) + 3).collect();
    for prompt in [json!(ids), json!([ids])] {
        let r = server.post("/v1/completions", &json!({"model": "a1", "prompt": prompt, "max_tokens": 4}));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["choices"][0]["text"], text.json()["choices"][0]["text"], "the same prompt as text");
        assert_eq!(r.json()["usage"]["prompt_tokens"], ids.len());
    }
    let routed =
        server.post("/v1/completions", &json!({"model": "ramole", "prompt": ids, "max_tokens": 1, "top_k": 1}));
    assert_eq!(routed.json()["routing"][0]["lora"], "a0", "routed by the tokens' text: {}", routed.text());
    for (prompt, needle) in [(json!([1, 2, 999_999]), "999999"), (json!([[5, 6], [7]]), "2 prompts"), (json!([]), "")] {
        let r = server.post("/v1/completions", &json!({"model": "tiny", "prompt": prompt, "max_tokens": 1}));
        assert_eq!(r.status, 400, "{prompt}: {}", r.text());
        assert!(r.text().contains(needle), "{prompt}: {}", r.text());
    }
}

/// Issue 25, 2: an upload's samples are embedded off the engine's thread (a request sent meanwhile is
/// answered before the upload is), and beyond `max_samples_per_lora` an upload is a 413 naming `samples`.
#[test]
fn uploads_embed_off_the_engine_thread_and_their_samples_are_capped() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (model, pool) = setup(tmp.path());
    let server = Running::start(common::ramole(&model, &pool), ServeConfig { max_samples_per_lora: 400, ..config() });
    let a2 = common::fixture().join("adapters/a2");
    let many: Vec<String> = (0..401).map(|i| format!("Spell it backwards, example {i}: word{i}")).collect();
    let r = upload(&server, "toomany", &json!(many), &a2);
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["error"]["param"], "samples", "{}", r.text());
    assert!(!pool.join("adapters/toomany").exists());

    let samples = json!(many[..400]);
    let addr = server.addr;
    let started = std::time::Instant::now();
    let uploading = std::thread::spawn(move || {
        let r = upload(&Running::at(addr), "many", &samples, &a2);
        (r.status, started.elapsed())
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let r = server.post("/v1/completions", &json!({"model": "a1", "prompt": "What is 2 + 2?", "max_tokens": 2}));
    assert_eq!(r.status, 200, "{}", r.text());
    let answered = started.elapsed();
    let (status, uploaded) = uploading.join().expect("upload thread");
    assert_eq!(status, 201);
    assert!(answered < uploaded, "the request ({answered:?}) did not wait for the upload ({uploaded:?})");
}

/// Issue 25, 4: a LoRA added to (or removed from) the pool's folder by another process while the server runs
/// is served (or no longer) within seconds, and its name is then known to the server, not half-known.
#[test]
fn a_pool_changed_by_another_process_is_picked_up() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (model, pool) = setup(tmp.path());
    let server = Running::start(common::ramole(&model, &pool), config());
    // What `ramole pool add` does, from another handle on the same folder.
    let (mut other, _) = ramole_retriever::LoraPool::open(&pool).expect("pool");
    let dir = pool.join("adapters/added");
    common::copy_adapter(&common::fixture().join("adapters/a2"), &dir);
    other.add("added", Some(&dir), &["Translate to French: tree".to_string()], &common::encoder()).expect("add");
    let listed = |name: &str| server.get("/v1/models").json().to_string().contains(&format!("\"{name}\""));
    let t = std::time::Instant::now();
    while !listed("added") && t.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(listed("added"), "picked up in {:?}", t.elapsed());
    let r = server
        .post("/v1/completions", &json!({"model": "added", "prompt": "Translate to French: cat", "max_tokens": 2}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upload(&server, "added", &json!(["x"]), &common::fixture().join("adapters/a2")).status, 409);
    other.remove("added").expect("remove");
    let t = std::time::Instant::now();
    while listed("added") && t.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!listed("added"), "a removal is picked up too");
    let r = server.post("/v1/completions", &json!({"model": "added", "prompt": "x", "max_tokens": 1}));
    assert_eq!(r.status, 404, "{}", r.text());
}

/// Issue 25, 9: the `gate` composition (or strategy) without a loaded gate is refused for one adapter as for
/// two, naming the field.
#[test]
fn the_gate_without_a_gate_is_refused_for_any_number_of_adapters() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (model, pool) = setup(tmp.path());
    let server = Running::start(common::ramole(&model, &pool), config());
    let one = json!([{"name": "a0", "weight": 1.0}]);
    let two = json!([{"name": "a0", "weight": 0.5}, {"name": "a1", "weight": 0.5}]);
    for adapters in [one, two] {
        let body =
            json!({"model": "tiny", "prompt": "x", "max_tokens": 1, "adapters": adapters, "composition": "gate"});
        let r = server.post("/v1/completions", &body);
        assert_eq!((r.status, r.json()["error"]["param"].clone()), (400, json!("composition")), "{}", r.text());
    }
    let r =
        server.post("/v1/completions", &json!({"model": "ramole", "prompt": "x", "max_tokens": 1, "strategy": "gate"}));
    assert_eq!((r.status, r.json()["error"]["param"].clone()), (400, json!("strategy")), "{}", r.text());
}
