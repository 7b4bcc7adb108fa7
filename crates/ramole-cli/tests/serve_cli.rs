//! `ramole serve` as an operator starts it: where the API key comes from, and the warning when a server
//! without a key listens beyond loopback. Each run is stopped once it says it serves.

mod common;

use std::process::Command;

use common::s;

/// Runs `ramole serve args` with `env` until it says it serves (then stops it: exit code `None`) or exits by
/// itself (its code); at most 120 s. Returns (exit code, stderr so far).
fn serve(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    use std::io::BufRead;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ramole"));
    cmd.arg("serve").args(args).env("RUST_BACKTRACE", "0").env_remove("RAMOLE_API_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.stderr(std::process::Stdio::piped()).spawn().expect("run ramole serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut text = String::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                text.push_str(&line);
                text.push('\n');
                if line.starts_with("serving ") {
                    let _ = child.kill();
                    let _ = child.wait();
                    return (None, text);
                }
            }
            // Closed: the process ended by itself; or the time ran out.
            Err(e) => {
                if matches!(e, std::sync::mpsc::RecvTimeoutError::Timeout) {
                    let _ = child.kill();
                }
                let code = child.wait().ok().and_then(|s| s.code());
                return (code, text);
            }
        }
    }
}

#[test]
fn the_api_key_comes_from_a_file_or_the_environment_and_an_open_server_is_warned_about() {
    let tmp = tempfile::tempdir().expect("tmp");
    let model = ramole_testkit::tiny_llama_with_tokenizer(tmp.path()).expect("model");
    let pool = tmp.path().join("pool");
    let samples = tmp.path().join("samples.jsonl");
    std::fs::write(&samples, "{\"input\": \"Say it loud: hello\"}\n").expect("write");
    let adapter = common::fixtures().join("tiny-llama/adapters/a0");
    common::ok(&["pool", "add", "t", "--pool", s(&pool), "--adapter", s(&adapter), "--samples", s(&samples)]);
    let base = ["--model", s(&model), "--pool", s(&pool), "--port", "0"];
    let with = |extra: &[&'static str]| -> Vec<String> { base.iter().chain(extra).map(|x| x.to_string()).collect() };
    let run = |extra: &[&'static str], env: &[(&str, &str)]| {
        let a = with(extra);
        serve(&a.iter().map(String::as_str).collect::<Vec<_>>(), env)
    };

    let key = tmp.path().join("key");
    std::fs::write(&key, "  s3cret  \nignored\n").expect("write");
    let a = with(&[]);
    let mut args: Vec<&str> = a.iter().map(String::as_str).collect();
    args.extend(["--api-key-file", s(&key)]);
    let (code, err) = serve(&args, &[]);
    assert_eq!(code, None, "it served: {err}");
    assert!(err.contains("API key required") && !err.contains("s3cret"), "{err}");

    let (code, err) = run(&[], &[("RAMOLE_API_KEY", "from-env")]);
    assert_eq!(code, None, "{err}");
    assert!(err.contains("API key required") && !err.contains("warning"), "{err}");

    let empty = tmp.path().join("empty-key");
    std::fs::write(&empty, "\n").expect("write");
    let mut args: Vec<&str> = a.iter().map(String::as_str).collect();
    args.extend(["--api-key-file", s(&empty)]);
    let (code, err) = serve(&args, &[]);
    assert!(code.is_some_and(|c| c != 0), "refused at once: {err}");
    assert!(err.contains("empty-key") && err.contains("no key"), "{err}");

    // Beyond loopback without a key: served, with a warning (no traffic is sent to it).
    let (code, err) = run(&["--host", "0.0.0.0"], &[]);
    assert_eq!(code, None, "{err}");
    assert!(err.contains("warning: serving on 0.0.0.0 without an API key"), "{err}");
    let (_, err) = run(&["--host", "127.0.0.1"], &[]);
    assert!(!err.contains("warning: serving"), "{err}");
}
