//! `ramole tasks list` and `ramole tasks build` as a user on a fresh machine runs them: an empty
//! `$RAMOLE_HOME`, no network, no Python (`$RAMOLE_PYTHON` points nowhere), run from an unrelated folder.

mod common;

use std::process::Command;

/// `ramole args` in `cwd` with a private, empty `$RAMOLE_HOME` and no usable Python.
fn fresh(cwd: &std::path::Path, home: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new("timeout")
        .arg("600")
        .arg(env!("CARGO_BIN_EXE_ramole"))
        .args(args)
        .current_dir(cwd)
        .env("RAMOLE_HOME", home)
        .env("RAMOLE_PYTHON", "/nonexistent/python3")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run ramole")
}

#[test]
fn tasks_are_listed_and_built_offline_from_any_folder() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    let cwd = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&cwd).expect("mkdir");

    let out = fresh(&cwd, &home, &["tasks", "list", "--json"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("a JSON array");
    assert!(listed.len() >= 40, "{} tasks", listed.len());
    for t in &listed {
        for key in ["name", "domain", "held_out", "metric", "source", "files", "train", "test", "samples"] {
            assert!(t.get(key).is_some(), "{key} missing in {t}");
        }
    }
    let domains: std::collections::BTreeSet<&str> = listed.iter().filter_map(|t| t["domain"].as_str()).collect();
    assert!(domains.len() >= 8, "{domains:?}");
    assert!(listed.iter().filter(|t| t["held_out"] == true).count() >= 6);
    assert!(!home.join("tasks").exists(), "listing writes nothing");

    let table = fresh(&cwd, &home, &["tasks", "list"]);
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("| country_capital | world_knowledge |") && text.contains("held out of retriever"), "{text}");

    // The default folder, then an explicit one: the same files.
    let out = fresh(&cwd, &home, &["tasks", "build"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let out_dir = tmp.path().join("suite");
    let out = fresh(&cwd, &home, &["tasks", "build", "--out", common::s(&out_dir)]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    for t in &listed {
        let name = t["name"].as_str().expect("name");
        for file in ["train.jsonl", "test.jsonl", "samples.jsonl"] {
            let a = std::fs::read(home.join("tasks").join(name).join(file)).expect("default build");
            let b = std::fs::read(out_dir.join(name).join(file)).expect("--out build");
            assert_eq!(a, b, "{name}/{file}");
            let lines = a.iter().filter(|&&c| c == b'\n').count();
            let key = file.trim_end_matches(".jsonl");
            assert_eq!(lines as u64, t[key].as_u64().expect("count"), "{name}/{file} holds what the list says");
        }
    }
    assert!(!cwd.read_dir().expect("cwd").any(|_| true), "nothing written where it ran");
}

#[test]
fn a_suite_folder_that_is_not_a_suite_is_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    let bad = tmp.path().join("not-a-suite");
    std::fs::create_dir_all(&bad).expect("mkdir");
    std::fs::write(bad.join("suite.json"), r#"{"format": 1, "tasks": []}"#).expect("w");
    let args = ["eval-retrieval", "--tasks", common::s(&bad)];
    let out = fresh(tmp.path(), &home, &args);
    let err = common::clean_failure(&args, &out);
    assert!(err.contains("not-a-suite") && err.contains("ramole tasks build"), "{err}");
}
