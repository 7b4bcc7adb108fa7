//! Every numeric argument is range-checked before anything runs: out-of-range values are refused by
//! clap (exit status 2, the flag and the allowed range named), so no model is needed here.

mod common;

fn ramole(args: &[&str]) -> std::process::Output {
    let home = tempfile::tempdir().expect("tempdir");
    common::run_in(Some(home.path()), args)
}

/// `args` must be refused by the argument parser, with a message naming `flag` and holding `words`.
fn refused(args: &[&str], flag: &str, words: &str) {
    let out = ramole(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?} was not refused by clap: {stderr}");
    assert!(stderr.contains("invalid value") && stderr.contains(flag), "{args:?}: {stderr}");
    assert!(stderr.contains(words), "{args:?}: expected {words:?} in {stderr}");
    assert!(out.stdout.is_empty(), "{args:?} printed {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn integer_arguments_out_of_range_are_refused() {
    let cases: &[(&[&str], &str, &str)] = &[
        (&["bench-decode", "--rank", "100000"], "--rank", "not in 1..=256"),
        (&["bench-decode", "--rank", "0"], "--rank", "not in 1..=256"),
        (&["bench-decode", "--batch", "0"], "--batch", "not in 1..=256"),
        (&["bench-decode", "--adapters", "0"], "--adapters", "not in 1..=256"),
        (&["bench-decode", "--mix", "0"], "--mix", "not in 1..=16"),
        (&["bench-decode", "--prompt-len", "0"], "--prompt-len", "not in 1..=4096"),
        (&["bench-decode", "--new-tokens", "100000"], "--new-tokens", "not in 1..=4096"),
        (&["bench-decode", "--rounds", "0"], "--rounds", "not in 1..=100"),
        (&["bench-decode", "--batch=-1"], "--batch", "-1"),
        (&["generate", "--prompt", "hi", "--max-new-tokens", "0"], "--max-new-tokens", "not in 1..=65536"),
        (&["retrieve", "--top-k", "0", "x"], "--top-k", "not in 1..=10000"),
        (&["retrieve", "--batch-size", "0", "x"], "--batch-size", "not in 1..=1024"),
        (&["embed", "--requests", "r", "--out", "o", "--batch-size", "0"], "--batch-size", "not in 1..=1024"),
        (&["eval-retrieval", "--per-task", "0"], "--per-task", "not in 1..=10000"),
        (&["eval-retrieval", "--batch-size", "100000"], "--batch-size", "not in 1..=1024"),
        (&["train-retriever", "--out", "o", "--epochs", "0"], "--epochs", "not in 1..=1000"),
        (&["train-retriever", "--out", "o", "--batch-size", "1"], "--batch-size", "not in 2..=512"),
        (&["train-retriever", "--out", "o", "--pairs-per-task", "0"], "--pairs-per-task", "not in 1..=10000"),
        (&["train-retriever", "--out", "o", "--max-seq-len", "1"], "--max-seq-len", "not in 2..=512"),
        (&["tasks", "build", "--max-examples", "1"], "--max-examples", "not in 2..=1000000"),
        (&["tasks", "build", "--samples", "0"], "--samples", "not in 1..=10000"),
        (&["tasks", "build", "--seed=-3"], "--seed", "-3"),
    ];
    for (args, flag, words) in cases {
        refused(args, flag, words);
    }
}

#[test]
fn float_arguments_out_of_range_or_not_finite_are_refused() {
    let cases: &[(&[&str], &str, &str)] = &[
        (&["generate", "--prompt", "hi", "--temperature=-0.5"], "--temperature", "at least 0"),
        (&["generate", "--prompt", "hi", "--temperature", "NaN"], "--temperature", "finite"),
        (&["generate", "--prompt", "hi", "--temperature", "inf"], "--temperature", "finite"),
        (&["generate", "--prompt", "hi", "--temperature", "1e39"], "--temperature", "finite"),
        (&["generate", "--prompt", "hi", "--top-p", "0"], "--top-p", "(0, 1]"),
        (&["generate", "--prompt", "hi", "--top-p", "1.5"], "--top-p", "(0, 1]"),
        (&["generate", "--prompt", "hi", "--top-p", "nan"], "--top-p", "(0, 1]"),
        (&["train-retriever", "--out", "o", "--lr", "0"], "--lr", "greater than 0"),
        (&["train-retriever", "--out", "o", "--lr", "nan"], "--lr", "finite"),
        (&["train-retriever", "--out", "o", "--temperature=-1"], "--temperature", "greater than 0"),
        (&["train-retriever", "--out", "o", "--temperature", "inf"], "--temperature", "finite"),
        (&["tasks", "build", "--test-fraction", "0"], "--test-fraction", "(0, 1)"),
        (&["tasks", "build", "--test-fraction", "1"], "--test-fraction", "(0, 1)"),
        (&["tasks", "build", "--test-fraction", "NaN"], "--test-fraction", "(0, 1)"),
        (&["tasks", "build", "--test-fraction", "x"], "--test-fraction", "not a number"),
    ];
    for (args, flag, words) in cases {
        refused(args, flag, words);
    }
}

/// Values that clap accepts one by one but that do not fit together are refused before any model is
/// loaded (exit status 1, naming the flags) — which also shows that clap accepted the values at the
/// top of each range.
#[test]
fn combinations_that_do_not_fit_are_refused_before_loading_a_model() {
    let cases: &[(&[&str], &str)] = &[
        (&["bench-decode", "--adapters", "4", "--mix", "5"], "--mix 5 is more than the 4 adapters"),
        (&["bench-decode", "--adapters", "256", "--rank", "256"], "--adapters 256 × --rank 256"),
        (&["bench-decode", "--batch", "256", "--prompt-len", "4096", "--new-tokens", "4096"], "tokens is more than"),
        (&["bench-decode", "--batch", "8", "--prompt-len", "4096", "--new-tokens", "1"], "prefill attention scores"),
        (
            &["train-retriever", "--out", "o", "--batch-size", "512", "--max-seq-len", "512", "--epochs", "1000"],
            "--batch-size 512 × --max-seq-len 512",
        ),
    ];
    for (args, words) in cases {
        let out = ramole(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(words), "{args:?}: expected {words:?} in {stderr}");
        assert!(!stderr.contains("loading"), "{args:?} loaded a model first: {stderr}");
    }
}

#[test]
fn help_documents_the_ranges() {
    let out = ramole(&["bench-decode", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("1 to 256") && help.contains("at most `--adapters`"), "{help}");
}
