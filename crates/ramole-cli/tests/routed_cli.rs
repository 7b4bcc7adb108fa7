//! `ramole train-lora`, `zoo build` and `run` as a user runs them, on the tiny Llama with a
//! byte-level tokenizer: a trained adapter folder, its refusals (existing output, bad data, a
//! diverging run: nothing written), a two-task zoo and routed answers with their routing.

mod common;

use std::path::Path;

use common::{fails, ok, ramole, s};

fn write_records(path: &Path, prefix: &str, target: &str, n: usize) {
    let lines: Vec<String> = (0..n)
        .map(|k| serde_json::json!({"task": "t", "input": format!("{prefix} {k}:"), "target": target}).to_string())
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").expect("write");
}

#[test]
fn train_lora_writes_a_peft_folder_and_refuses_what_it_must() {
    let tmp = tempfile::tempdir().expect("tmp");
    let model = ramole_testkit::tiny_llama_with_tokenizer(tmp.path()).expect("model");
    let data = tmp.path().join("train.jsonl");
    write_records(&data, "Say it loud", "yes", 12);
    let out = tmp.path().join("lora");
    let common = ["--model", s(&model), "--data", s(&data), "--rank", "2", "--batch-size", "4"];
    let args = |extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = ["train-lora", "--out", s(&out)].iter().map(|x| x.to_string()).collect();
        v.extend(common.iter().map(|x| x.to_string()));
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let run = |extra: &[&'static str]| {
        let a = args(extra);
        ramole(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let first = run(&["--steps", "3"]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    for file in ["adapter_config.json", "adapter_model.safetensors", "ramole_training.json"] {
        assert!(out.join(file).is_file(), "{file}");
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).expect("read")).expect("json");
    assert_eq!((config["r"].as_u64(), config["lora_alpha"].as_f64()), (Some(2), Some(4.0)));
    let before = std::fs::read(out.join("adapter_model.safetensors")).expect("read");

    // An existing output is refused unless --force, and left as it was.
    let again = run(&["--steps", "3", "--seed", "9"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert_eq!(std::fs::read(out.join("adapter_model.safetensors")).expect("read"), before);
    assert!(run(&["--steps", "3", "--seed", "9", "--force"]).status.success());
    assert_ne!(std::fs::read(out.join("adapter_model.safetensors")).expect("read"), before);

    // Bad data and a diverging run: a clear error, nothing written.
    let fresh = tmp.path().join("fresh");
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"input\": \"a\", \"target\": \"b\"}\n{\"input\": \"a\", \"target\": \"\"}\n")
        .expect("write");
    let err = fails(&["train-lora", "--model", s(&model), "--data", s(&bad), "--out", s(&fresh)]);
    assert!(err.contains("bad.jsonl") && err.contains("line 2") && err.contains("empty `target`"), "{err}");
    let err = fails(&[
        "train-lora",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--out",
        s(&fresh),
        "--steps",
        "5",
        "--lr",
        "1e30",
    ]);
    assert!(err.contains("nothing was written"), "{err}");
    assert!(!fresh.exists());
    let err = fails(&["train-lora", "--model", s(&model), "--data", s(&data), "--out", s(&fresh), "--rank", "0"]);
    assert!(err.contains("--rank"), "{err}");
    let err = fails(&["train-lora", "--model", s(&model), "--data", s(&data), "--out", s(&model)]);
    assert!(err.contains("an input of this command"), "{err}");
}

#[test]
fn a_zoo_is_built_and_inputs_are_routed_to_their_loras() {
    let tmp = tempfile::tempdir().expect("tmp");
    let model = ramole_testkit::tiny_llama_with_tokenizer(tmp.path()).expect("model");
    let suite = tmp.path().join("suite");
    let mut tasks = Vec::new();
    for (name, prefix, target, domain) in
        [("shout", "Say it loud", "yes", "syntax"), ("count", "How many apples are there", "7", "arithmetic")]
    {
        std::fs::create_dir_all(suite.join(name)).expect("mkdir");
        write_records(&suite.join(name).join("train.jsonl"), prefix, target, 16);
        write_records(&suite.join(name).join("test.jsonl"), prefix, target, 4);
        write_records(&suite.join(name).join("samples.jsonl"), prefix, target, 4);
        tasks.push(serde_json::json!({"name": name, "domain": domain, "held_out": false, "metric": "exact_match",
            "source": "bigbench", "files": "handmade", "examples": 24, "unique": 24, "used": 24, "train": 16, "test": 4, "samples": 4}));
    }
    let meta = serde_json::json!({"format": 2, "digest": "handmade", "seed": 1, "min_test": 4,
        "max_examples": 24, "test_fraction": 0.2, "samples_per_task": 4,
        "domains": {"syntax": ["shout"], "arithmetic": ["count"]}, "tasks": tasks});
    std::fs::write(suite.join("suite.json"), meta.to_string()).expect("write");
    let zoo = tmp.path().join("zoo");
    let out = ok(&["zoo", "build", "--out", s(&zoo), "--tasks", s(&suite), "--model", s(&model), "--steps", "4"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("2 trained, 0 up to date"), "{err}");
    let out = ok(&["zoo", "build", "--out", s(&zoo), "--tasks", s(&suite), "--model", s(&model), "--steps", "4"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("0 trained, 2 up to date"));

    let requests = tmp.path().join("requests.jsonl");
    std::fs::write(
        &requests,
        "\"Say it loud 99:\"\n{\"input\": \"How many apples are there 42:\", \"max_new_tokens\": 3}\n",
    )
    .expect("write");
    let pool = zoo.join("pool");
    let out = ok(&[
        "run",
        "--pool",
        s(&pool),
        "--model",
        s(&model),
        "--requests",
        s(&requests),
        "--strategy",
        "selection",
        "--json",
    ]);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 2);
    for (line, lora) in lines.iter().zip(["shout", "count"]) {
        assert_eq!(line["strategy"], "selection");
        assert_eq!(line["routing"][0]["lora"], lora, "{line}");
        assert_eq!(line["routing"][0]["weight"], 1.0);
        assert!(line["routing"][0]["score"].as_f64().is_some_and(|s| s > 0.0));
        assert!(line["output"].is_string() && line["input"].is_string());
    }
    let out = ok(&["run", "--pool", s(&pool), "--model", s(&model), "--requests", s(&requests), "--top-k", "2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[mixture: ") && text.contains("w 0.50"), "{text}");

    // One prompt routed by `generate --route`.
    let out = ok(&[
        "generate",
        "--route",
        "--pool",
        s(&pool),
        "--model",
        s(&model),
        "--prompt",
        "Say it loud 7:",
        "--max-new-tokens",
        "3",
        "--strategy",
        "selection",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[selection: shout (cos "), "{err}");

    // The RouterLoRA gate: trained over the zoo's pool on the suite's training tasks, then routing
    // with `--strategy gate`; without `--gate` that strategy is refused before anything loads.
    let gate = tmp.path().join("gate");
    let train = [
        "train-gate",
        "--out",
        s(&gate),
        "--pool",
        s(&pool),
        "--model",
        s(&model),
        "--tasks",
        s(&suite),
        "--steps",
        "3",
        "--per-task",
        "4",
        "--top-k",
        "2",
        "--batch-size",
        "4",
        "--rank",
        "2",
    ];
    let out = ok(&train);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("8 examples from 2 tasks, 3 steps"), "{said}");
    assert!(gate.join("gate_config.json").is_file() && gate.join("train_gate_report.json").is_file());
    assert!(fails(&train).contains("already exists"));
    let out = ok(&[
        "run",
        "--pool",
        s(&pool),
        "--model",
        s(&model),
        "--requests",
        s(&requests),
        "--top-k",
        "2",
        "--strategy",
        "gate",
        "--gate",
        s(&gate),
        "--json",
    ]);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let line: serde_json::Value = serde_json::from_str(line).expect("json");
        assert_eq!(line["strategy"], "gate");
        assert_eq!(line["routing"].as_array().map(Vec::len), Some(2), "{line}");
    }
    let err =
        fails(&["run", "--pool", s(&pool), "--model", s(&model), "--requests", s(&requests), "--strategy", "gate"]);
    assert!(err.contains("--strategy gate needs --gate"), "{err}");

    // A vanished adapter: that LoRA is skipped with a warning, the other is served.
    std::fs::remove_dir_all(pool.join("adapters").join("count")).expect("rm");
    let out = ok(&["run", "--pool", s(&pool), "--model", s(&model), "--requests", s(&requests), "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("LoRA `count` is not served"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).lines().all(|l| l.contains("\"lora\":\"shout\"")));
    // An empty pool is an error.
    std::fs::remove_dir_all(pool.join("adapters").join("shout")).expect("rm");
    let err = fails(&["run", "--pool", s(&pool), "--model", s(&model), "--requests", s(&requests)]);
    assert!(err.contains("no LoRA with a loadable adapter"), "{err}");
}

/// Issue 25, 9: `train-lora --out . --force` writes the adapter into the current folder (once resolved, `.`
/// is a folder like any other) and leaves no temporary folder behind, there or beside it.
#[test]
fn train_lora_into_the_current_folder_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().expect("tmp");
    let model = ramole_testkit::tiny_llama_with_tokenizer(tmp.path()).expect("model");
    let data = tmp.path().join("train.jsonl");
    write_records(&data, "Say it loud", "yes", 8);
    let here = tmp.path().join("here");
    std::fs::create_dir(&here).expect("mkdir");
    let args = ["train-lora", "--out", ".", "--force", "--model", s(&model), "--data", s(&data), "--rank", "2"];
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ramole"))
        .args(args)
        .args(["--steps", "1", "--batch-size", "4"])
        .current_dir(&here)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        assert!(here.join(file).is_file(), "{file} written into the current folder");
    }
    let hidden = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .expect("dir")
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| n.starts_with('.'))
            .collect()
    };
    assert!(hidden(&here).is_empty() && hidden(tmp.path()).is_empty(), "{:?} {:?}", hidden(&here), hidden(tmp.path()));
}
