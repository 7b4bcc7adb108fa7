//! `ramole batch`, `generate` and the other commands' output files end to end on the tiny-llama
//! fixture (issue 6): README examples, outputs written atomically (through symlinks, no temporary
//! file left, nothing written when every request failed), outputs that are inputs refused before any
//! work, and token budgets at the edges.

mod common;

use std::path::{Path, PathBuf};

use common::{fails, ok, ramole, s, stderr};

use safetensors::SafeTensors;

/// A word-level tokenizer for the tiny model, so that prompts (README example `b`) work.
const TINY_TOKENIZER: &str = r#"{"version": "1.0", "truncation": null, "padding": null,
  "added_tokens": [{"id": 3, "content": "<|im_start|>", "single_word": false, "lstrip": false, "rstrip": false,
                    "normalized": false, "special": true}],
  "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
  "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "Plural": 1, "</s>": 2, "<|im_start|>": 3, "of": 4,
            "mouse": 5, ":": 6, "hello": 7}, "unk_token": "<unk>"}}"#;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/fixtures/tiny-llama")
}

/// The tiny-llama base model with a tokenizer, copied into `dir/base`.
fn base_with_tokenizer(dir: &Path) -> PathBuf {
    let base = dir.join("base");
    std::fs::create_dir(&base).expect("mkdir");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture().join("base").join(f), base.join(f)).expect("copy");
    }
    std::fs::write(base.join("tokenizer.json"), TINY_TOKENIZER).expect("write");
    base
}

/// The README's request-file example (its first ```json block).
fn readme_example() -> String {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).expect("README");
    let start = text.find("```json\n").expect("a ```json block") + "```json\n".len();
    let end = start + text[start..].find("```").expect("closed");
    text[start..end].to_string()
}

/// The names in a folder, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn tensor_names(file: &Path) -> Vec<String> {
    let bytes = std::fs::read(file).expect("output");
    let st = SafeTensors::deserialize(&bytes).expect("a safetensors file");
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    names
}

#[test]
fn readme_examples_run_including_requests_that_do_not_decode() {
    let dir = tempfile::tempdir().expect("tmp");
    let base = base_with_tokenizer(dir.path());
    let requests = dir.path().join("readme.json");
    std::fs::write(&requests, readme_example()).expect("write");
    let out = dir.path().join("out.safetensors");
    let adapters = fixture().join("adapters");
    ok(&["batch", "--model", s(&base), "--adapters", s(&adapters), "--requests", s(&requests), "--out", s(&out)]);
    assert_eq!(tensor_names(&out), ["greedy.a", "logits.a", "logits.b", "logits.c", "logits.d"]);
    let bytes = std::fs::read(&out).expect("read");
    let st = SafeTensors::deserialize(&bytes).expect("valid");
    assert_eq!(st.tensor("logits.b").expect("b").shape(), [4, 512], "`Plural of mouse:` is 4 tokens");
    assert_eq!(st.tensor("logits.c").expect("c").shape(), [2, 512]);
    assert_eq!(st.tensor("logits.d").expect("d (arrow)").shape(), [2, 512]);
    assert_eq!(st.tensor("greedy.a").expect("a").shape(), [8]);

    // Only b, c and d: no row of the batch decodes.
    let bc = dir.path().join("bc.json");
    let text = readme_example();
    let lines: Vec<&str> = text.lines().filter(|l| !l.contains("\"name\": \"a\"")).collect();
    std::fs::write(&bc, lines.join("\n")).expect("write");
    ok(&["batch", "--model", s(&base), "--adapters", s(&adapters), "--requests", s(&bc), "--out", s(&out)]);
    assert_eq!(tensor_names(&out), ["logits.b", "logits.c", "logits.d"]);
    assert_eq!(listing(dir.path()), ["base", "bc.json", "out.safetensors", "readme.json"], "no temporary file");
}

#[test]
fn outputs_that_are_inputs_are_refused_before_any_work() {
    let dir = tempfile::tempdir().expect("tmp");
    let base = base_with_tokenizer(dir.path());
    let adapters = dir.path().join("adapters");
    std::fs::create_dir(&adapters).expect("mkdir");
    for a in ["a0", "a1"] {
        let to = adapters.join(a);
        std::fs::create_dir(&to).expect("mkdir");
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::copy(fixture().join("adapters").join(a).join(f), to.join(f)).expect("copy");
        }
    }
    let requests = dir.path().join("req.json");
    let text = r#"{"cases": [{"name": "a", "input_ids": [5, 9], "adapters": [["a0", 1.0]], "greedy_new_tokens": 2}]}"#;
    std::fs::write(&requests, text).expect("write");
    let link = dir.path().join("link.json");
    #[cfg(unix)]
    std::os::unix::fs::symlink(&requests, &link).expect("symlink");
    let before = listing(dir.path());
    let model_file = base.join("model.safetensors");
    let model_bytes = std::fs::read(&model_file).expect("read");

    let batch = |model: &Path, out: &Path| {
        fails(&["batch", "--model", s(model), "--adapters", s(&adapters), "--requests", s(&requests), "--out", s(out)])
    };
    let mut outs = vec![requests.clone(), model_file.clone(), base.join("new.safetensors"), adapters.join("x.st")];
    outs.push(adapters.join("a0").join("adapter_model.safetensors"));
    if cfg!(unix) {
        outs.push(link.clone());
    }
    for out in &outs {
        let err = batch(&base, out);
        assert!(err.contains("refusing to overwrite"), "{}: {err}", out.display());
        if !out.starts_with(&base) {
            // Refused before the model is even looked at.
            let err = batch(&dir.path().join("no-such-model"), out);
            assert!(err.contains("refusing to overwrite") && !err.contains("no-such-model: "), "{err}");
        }
    }
    // Not a regular file, or in a folder that does not exist.
    assert!(batch(&base, dir.path()).contains("a folder"));
    assert!(batch(&base, &dir.path().join("nowhere/out.st")).contains("does not exist"));
    assert_eq!(std::fs::read_to_string(&requests).expect("read"), text, "the request file is untouched");
    assert_eq!(std::fs::read(&model_file).expect("read"), model_bytes, "the model is untouched");
    assert_eq!(listing(dir.path()), before, "nothing written");
    assert_eq!(listing(&adapters), ["a0", "a1"]);

    // The same for `embed --out` and `eval-retrieval --json` (refused before the encoder is loaded).
    let err =
        fails(&["embed", "--model", s(&dir.path().join("none")), "--requests", s(&requests), "--out", s(&requests)]);
    assert!(err.contains("refusing to overwrite"), "{err}");
    let report = dir.path().join("report.json");
    std::fs::write(&report, "{}").expect("write");
    let err = fails(&[
        "eval-retrieval",
        "--model",
        s(&dir.path().join("none")),
        "--tasks",
        s(&dir.path().join("none")),
        "--before",
        s(&report),
        "--json",
        s(&report),
    ]);
    assert!(err.contains("refusing to overwrite"), "{err}");
    assert_eq!(std::fs::read_to_string(&report).expect("read"), "{}");
}

#[cfg(unix)]
#[test]
fn outputs_are_written_atomically_through_symlinks() {
    let dir = tempfile::tempdir().expect("tmp");
    let base = base_with_tokenizer(dir.path());
    let adapters = fixture().join("adapters");
    let requests = dir.path().join("req.json");
    std::fs::write(
        &requests,
        r#"{"cases": [{"name": "a", "input_ids": [5, 9], "adapters": [["a0", 1.0]], "greedy_new_tokens": 2},
                      {"name": "z", "prompt": "hello of", "adapters": [["a1", 0.5], ["a2", 0.5]], "composition": "mixture"}]}"#,
    )
    .expect("write");
    let outdir = dir.path().join("outs");
    std::fs::create_dir(&outdir).expect("mkdir");
    let real = outdir.join("real.safetensors");
    std::fs::write(&real, "old").expect("write");
    let link = outdir.join("link.safetensors");
    std::os::unix::fs::symlink("real.safetensors", &link).expect("symlink");
    ok(&["batch", "--model", s(&base), "--adapters", s(&adapters), "--requests", s(&requests), "--out", s(&link)]);
    assert!(std::fs::symlink_metadata(&link).expect("meta").file_type().is_symlink(), "the link stays a link");
    assert_eq!(tensor_names(&real), ["greedy.a", "logits.a", "logits.z"]);
    assert_eq!(listing(&outdir), ["link.safetensors", "real.safetensors"], "no temporary file");
}

#[test]
fn failed_requests_leave_an_earlier_output_untouched() {
    let dir = tempfile::tempdir().expect("tmp");
    let base = base_with_tokenizer(dir.path());
    let adapters = fixture().join("adapters");
    let out = dir.path().join("out.safetensors");
    std::fs::write(&out, "earlier output").expect("write");
    let run = |cases: &str| {
        let requests = dir.path().join("req.json");
        std::fs::write(&requests, format!("{{\"cases\": [{cases}]}}")).expect("write");
        ramole(&[
            "batch",
            "--model",
            s(&base),
            "--adapters",
            s(&adapters),
            "--requests",
            s(&requests),
            "--out",
            s(&out),
        ])
    };
    // Every request fails (unknown adapter, too long, non-finite logits, empty prompt): nothing is written.
    let res = run(r#"{"name": "u", "input_ids": [5], "adapters": [["nope", 1.0]]},
                     {"name": "big", "input_ids": [5], "greedy_new_tokens": 18446744073709551615},
                     {"name": "nan", "input_ids": [5, 6], "adapters": [["a0", 1e30]], "greedy_new_tokens": 3},
                     {"name": "e", "prompt": ""}"#);
    let err = stderr(&res);
    assert!(!res.status.success() && !err.contains("panicked"), "{err}");
    for needle in
        ["request `u`: unknown adapter `nope`", "request `big`", "exceeds the context", "request `nan`", "request `e`"]
    {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    assert!(err.contains("all 4 request(s) failed"), "{err}");
    assert_eq!(std::fs::read_to_string(&out).expect("read"), "earlier output");
    assert_eq!(listing(dir.path()), ["base", "out.safetensors", "req.json"], "no temporary file");

    // Some fail: the others are written, and the exit status says so.
    let res = run(r#"{"name": "good", "input_ids": [5, 9], "greedy_new_tokens": 2},
                     {"name": "nan", "input_ids": [5, 6], "adapters": [["a0", 1e30]], "greedy_new_tokens": 3}"#);
    let err = stderr(&res);
    assert!(!res.status.success() && err.contains("1 of 2 request(s) failed"), "{err}");
    assert!(err.contains("request `nan`") && err.contains("logits"), "{err}");
    assert_eq!(tensor_names(&out), ["greedy.good", "logits.good"]);

    // A request file that is not valid: nothing runs, nothing is written.
    std::fs::write(&out, "earlier output").expect("write");
    let res = run(r#"{"name": "x"}"#);
    assert!(stderr(&res).contains("request `x`: needs `input_ids` or `prompt`"), "{}", stderr(&res));
    assert_eq!(std::fs::read_to_string(&out).expect("read"), "earlier output");
}

#[test]
fn adapters_folder_may_be_one_adapter_and_must_hold_some() {
    let dir = tempfile::tempdir().expect("tmp");
    let base = base_with_tokenizer(dir.path());
    let requests = dir.path().join("req.json");
    std::fs::write(&requests, r#"{"cases": [{"name": "a", "input_ids": [5, 9], "adapters": [["a0", 1.0]]}]}"#)
        .expect("write");
    let out = dir.path().join("out.safetensors");
    let one = fixture().join("adapters/a0");
    let res = ok(&["batch", "--model", s(&base), "--adapters", s(&one), "--requests", s(&requests), "--out", s(&out)]);
    assert!(stderr(&res).contains("loaded 1 adapter(s)"), "{}", stderr(&res));
    assert_eq!(tensor_names(&out), ["logits.a"]);

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let err =
        fails(&["batch", "--model", s(&base), "--adapters", s(&empty), "--requests", s(&requests), "--out", s(&out)]);
    assert!(err.contains("no adapters"), "{err}");
}

#[test]
fn generate_with_zero_and_huge_token_budgets() {
    let dir = tempfile::tempdir().expect("tmp");
    let base = base_with_tokenizer(dir.path());
    // `--max-new-tokens 0` may be refused by the argument's range; if it is taken, it must run.
    let res = ramole(&["generate", "--model", s(&base), "--prompt", "hello of", "--max-new-tokens", "0"]);
    let err = stderr(&res);
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        if res.status.success() { err.contains("+ 0 new tokens") } else { err.contains("--max-new-tokens") },
        "{err}"
    );
    let start = std::time::Instant::now();
    let err =
        fails(&["generate", "--model", s(&base), "--prompt", "hello", "--max-new-tokens", "18446744073709551615"]);
    assert!(err.contains("exceeds the context") || err.contains("--max-new-tokens"), "{err}");
    assert!(start.elapsed().as_secs() < 60);
    // Beyond the tiny model's context of 256, within any range of the argument.
    let err = fails(&["generate", "--model", s(&base), "--prompt", "hello", "--max-new-tokens", "300"]);
    assert!(err.contains("exceeds the context"), "{err}");
    let res = ok(&["generate", "--model", s(&base), "--prompt", "<|im_start|>", "--max-new-tokens", "3"]);
    assert!(stderr(&res).contains("[1 prompt +"), "{}", stderr(&res));
}

/// `ramole batch --gate DIR`: a gate folder (here written by hand, `B_g = 0`: every key is zero) makes
/// `"composition": "gate"` rows the uniform mixture of their adapters; without `--gate` such a row fails
/// alone, naming what is missing.
#[test]
fn batch_takes_a_gate_for_gate_rows() {
    let dir = tempfile::tempdir().expect("tmp");
    let gate = dir.path().join("gate");
    std::fs::create_dir(&gate).expect("mkdir");
    std::fs::write(
        gate.join("gate_config.json"),
        r#"{"format": "ramole-gate/1", "rank": 2, "targets": ["q_proj", "v_proj"], "num_hidden_layers": 2, "hidden_size": 64}"#,
    )
    .expect("write");
    // q_proj [64, 64], v_proj [32, 64] (2 key-value heads of 16) in both blocks.
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for layer in 0..2 {
        for (module, d_out) in [("q_proj", 64), ("v_proj", 32)] {
            let prefix = format!("model.layers.{layer}.self_attn.{module}");
            let a: Vec<u8> = (0..2 * 64).flat_map(|i| ((i % 7) as f32 * 0.05 - 0.15).to_le_bytes()).collect();
            tensors.push((format!("{prefix}.gate_A.weight"), vec![2, 64], a));
            tensors.push((format!("{prefix}.gate_B.weight"), vec![d_out, 2], vec![0u8; d_out * 2 * 4]));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, shape, b)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b).expect("view"))
        })
        .collect();
    safetensors::serialize_to_file(views, None, &gate.join("gate.safetensors")).expect("write");
    let requests = dir.path().join("gate.json");
    std::fs::write(
        &requests,
        r#"{"cases": [
  {"name": "g", "input_ids": [5, 9, 13], "adapters": [["a0", 1], ["a1", 1]], "composition": "gate"},
  {"name": "m", "input_ids": [5, 9, 13], "adapters": [["a0", 0.5], ["a1", 0.5]], "composition": "mixture"}]}"#,
    )
    .expect("write");
    let base = fixture().join("base");
    let adapters = fixture().join("adapters");
    let out = dir.path().join("out.safetensors");
    let args = ["batch", "--model", s(&base), "--adapters", s(&adapters), "--requests", s(&requests), "--out", s(&out)];
    let err = fails(&args);
    assert!(err.contains("needs a RouterLoRA gate"), "{err}");
    let mut with_gate = args.to_vec();
    with_gate.extend(["--gate", s(&gate)]);
    ok(&with_gate);
    let bytes = std::fs::read(&out).expect("read");
    let st = SafeTensors::deserialize(&bytes).expect("valid");
    let f32s = |name: &str| -> Vec<f32> {
        st.tensor(name)
            .expect(name)
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    let (g, m) = (f32s("logits.g"), f32s("logits.m"));
    let worst = g.iter().zip(&m).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-5, "a gate with B_g = 0 is the uniform mixture (max diff {worst})");
}
