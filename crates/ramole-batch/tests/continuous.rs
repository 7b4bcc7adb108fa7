//! Continuous batching on the tiny Llama fixture: requests joining a running batch at any step, in any
//! order, produce the greedy tokens of `Engine::run` (and so of the PyTorch + PEFT reference); rows
//! leave as they finish or are cancelled without changing the others.

mod common;

use std::collections::HashMap;

use common::token_ids;
use ramole_batch::{
    Batching, Engine, Event, FinishReason, Request, RequestFile, RequestInput, RunOptions, Scheduler, SequenceId,
};
use ramole_core::backend::{Selected, device};
use safetensors::SafeTensors;

fn engine() -> Engine<Selected> {
    let fixture = common::fixture("tiny-llama");
    let mut engine = Engine::<Selected>::load(fixture.join("base"), &device()).expect("tiny llama loads");
    let report = engine.adapters_mut().load_dir(fixture.join("adapters")).expect("adapters folder");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    engine
}

/// The fixture's cases (every composition), with budgets that make rows finish at different steps.
fn requests() -> Vec<Request> {
    let mut file = RequestFile::from_file(common::fixture("tiny-llama").join("cases.json")).expect("cases");
    for (i, r) in file.requests.iter_mut().enumerate() {
        r.max_new_tokens = [8, 3, 12, 1, 17, 8, 5, 20][i];
    }
    file.requests
}

/// Runs `requests` through a scheduler of `max_rows` rows, admitting `arrivals[s]` (indices into
/// `requests`) before step `s`; returns each request's tokens by name, and the most rows that ran.
fn serve(
    engine: &Engine<Selected>,
    requests: &[Request],
    max_rows: usize,
    arrivals: &[Vec<usize>],
) -> (HashMap<String, Vec<u32>>, usize) {
    serve_with(engine, requests, Scheduler::new(max_rows), arrivals)
}

/// [`serve`] through a given scheduler.
fn serve_with(
    engine: &Engine<Selected>,
    requests: &[Request],
    mut scheduler: Scheduler<Selected>,
    arrivals: &[Vec<usize>],
) -> (HashMap<String, Vec<u32>>, usize) {
    let mut names: HashMap<SequenceId, String> = HashMap::new();
    let mut streamed: HashMap<SequenceId, Vec<u32>> = HashMap::new();
    let mut done = HashMap::new();
    let mut most = 0;
    let mut step = 0;
    while step < arrivals.len() || !scheduler.is_idle() {
        for &i in arrivals.get(step).into_iter().flatten() {
            let id = scheduler.admit(engine, requests[i].clone()).expect("admitted");
            names.insert(id, requests[i].name.clone());
        }
        for event in scheduler.step(engine) {
            match event {
                Event::Token { id, token } => streamed.entry(id).or_default().push(token),
                Event::Finished { id, reason, new_tokens, .. } => {
                    assert_eq!(streamed.remove(&id).unwrap_or_default(), new_tokens, "streamed = finished");
                    assert_eq!(
                        reason == FinishReason::Length,
                        new_tokens.len() == requests_budget(requests, &names[&id])
                    );
                    done.insert(names[&id].clone(), new_tokens);
                }
                Event::Failed { error, .. } => panic!("{error}"),
            }
        }
        most = most.max(scheduler.running());
        step += 1;
        assert!(step < 1000, "the scheduler does not finish");
    }
    (done, most)
}

fn requests_budget(requests: &[Request], name: &str) -> usize {
    requests.iter().find(|r| r.name == name).map_or(0, |r| r.max_new_tokens)
}

fn static_batch(engine: &Engine<Selected>, requests: &[Request]) -> HashMap<String, Vec<u32>> {
    engine
        .run(requests, RunOptions::default())
        .into_iter()
        .map(|o| {
            let o = o.expect("runs");
            (o.name, o.new_tokens)
        })
        .collect()
}

#[test]
fn rows_joining_at_any_step_give_the_static_batch_tokens() {
    let engine = engine();
    let requests = requests();
    let expected = static_batch(&engine, &requests);
    // The first 8 greedy tokens are PyTorch + PEFT's.
    let reference = std::fs::read(common::fixture("tiny-llama").join("reference.safetensors")).expect("reference");
    let reference = SafeTensors::deserialize(&reference).expect("reference file");
    for r in &requests {
        let greedy = token_ids(&reference.tensor(&format!("greedy.{}", r.name)).expect("greedy"));
        let n = r.max_new_tokens.min(greedy.len());
        assert_eq!(expected[&r.name][..n], greedy[..n], "{}", r.name);
    }

    let n = requests.len();
    let orders: Vec<(usize, Vec<Vec<usize>>)> = vec![
        // All at once, room for all.
        (8, vec![(0..n).collect()]),
        // One per step, in reverse order, 3 rows at most: newcomers wait, then join mid-batch.
        (3, (0..n).rev().map(|i| vec![i]).collect()),
        // Two per step with gaps, 4 rows.
        (4, vec![vec![5, 1], vec![], vec![7, 0], vec![3], vec![], vec![], vec![2, 6, 4]]),
    ];
    for (max_rows, arrivals) in orders {
        let (got, most) = serve(&engine, &requests, max_rows, &arrivals);
        assert!(most <= max_rows, "{most} rows ran with a limit of {max_rows}");
        assert_eq!(got.len(), n);
        for r in &requests {
            assert_eq!(got[&r.name], expected[&r.name], "{} (max rows {max_rows}, arrivals {arrivals:?})", r.name);
        }
    }
}

#[test]
fn a_cancelled_row_leaves_without_changing_the_others() {
    let engine = engine();
    let requests = requests();
    let expected = static_batch(&engine, &requests);
    let mut scheduler = Scheduler::new(8);
    let ids: Vec<SequenceId> =
        requests.iter().map(|r| scheduler.admit(&engine, r.clone()).expect("admitted")).collect();
    let mut done = HashMap::new();
    let mut step = 0;
    while !scheduler.is_idle() {
        if step == 2 {
            assert!(scheduler.cancel(ids[7]), "the longest row is running");
            assert!(!scheduler.cancel(ids[7]), "and gone");
        }
        for event in scheduler.step(&engine) {
            if let Event::Finished { id, new_tokens, .. } = event {
                done.insert(id, new_tokens);
            }
        }
        step += 1;
    }
    assert!(!done.contains_key(&ids[7]));
    for (r, id) in requests.iter().zip(&ids).take(7) {
        assert_eq!(done[id], expected[&r.name], "{}", r.name);
    }
}

#[test]
fn a_running_row_keeps_an_adapter_removed_from_the_engine() {
    let mut engine = engine();
    let requests = requests();
    let expected = static_batch(&engine, &requests);
    let mut scheduler = Scheduler::new(8);
    let ids: Vec<SequenceId> =
        requests.iter().map(|r| scheduler.admit(&engine, r.clone()).expect("admitted")).collect();
    scheduler.step(&engine);
    assert!(scheduler.adapters_in_use().any(|a| a == "a1"));
    let removed = engine.adapters_mut().remove("a1").expect("a1 was loaded");
    drop(removed);
    // A new request for it is refused; the running ones finish as before.
    let err = scheduler.admit(&engine, requests[2].clone()).expect_err("a1 is gone");
    assert!(err.to_string().contains("a1"), "{err}");
    let mut done: HashMap<SequenceId, Vec<u32>> = HashMap::new();
    let mut first: HashMap<SequenceId, u32> = HashMap::new();
    while !scheduler.is_idle() {
        for event in scheduler.step(&engine) {
            match event {
                Event::Finished { id, new_tokens, .. } => {
                    done.insert(id, new_tokens);
                }
                Event::Token { id, token } => {
                    first.entry(id).or_insert(token);
                }
                Event::Failed { error, .. } => panic!("{error}"),
            }
        }
    }
    for (r, id) in requests.iter().zip(&ids) {
        // Rows of one token finished in the first step, before the removal.
        if let Some(tokens) = done.get(id) {
            assert_eq!(tokens, &expected[&r.name], "{}", r.name);
        } else {
            assert_eq!(r.max_new_tokens, 1, "{} finished before", r.name);
        }
    }
}

#[test]
fn a_row_with_no_budget_finishes_at_once_and_bad_requests_are_refused_at_admission() {
    let engine = engine();
    let mut requests = requests();
    let mut scheduler = Scheduler::new(4);
    requests[0].max_new_tokens = 0;
    let id = scheduler.admit(&engine, requests[0].clone()).expect("admitted");
    let events = scheduler.step(&engine);
    assert!(
        matches!(&events[..], [Event::Finished { id: i, reason: FinishReason::Length, new_tokens, .. }] if *i == id && new_tokens.is_empty()),
        "{events:?}"
    );
    assert!(scheduler.is_idle());
    let mut bad = requests[1].clone();
    bad.row.adapters = vec![("nope".into(), 1.0)];
    let err = scheduler.admit(&engine, bad).expect_err("unknown adapter");
    assert!(err.to_string().contains("nope"), "{err}");
    let mut long = requests[1].clone();
    long.max_new_tokens = usize::MAX;
    assert!(scheduler.admit(&engine, long).is_err(), "over the context");
    assert!(scheduler.is_idle());
}

#[test]
fn chunked_prefill_and_static_batching_give_the_static_batch_tokens() {
    let engine = engine();
    let requests = requests();
    let expected = static_batch(&engine, &requests);
    let n = requests.len();
    let arrivals: Vec<Vec<usize>> = vec![vec![5, 1], vec![], vec![7, 0], vec![3], vec![], vec![], vec![2, 6, 4]];
    // Chunks of 1 token (one column per step), of fewer tokens than the group has rows, and of a few
    // columns; continuous and static.
    for chunk in [1, 3, 10] {
        for batching in [Batching::Continuous, Batching::Static] {
            let scheduler = Scheduler::new(4).prefill_chunk(chunk).batching(batching);
            let (got, most) = serve_with(&engine, &requests, scheduler, &arrivals);
            assert!(most <= 4);
            assert_eq!(got.len(), n);
            for r in &requests {
                assert_eq!(got[&r.name], expected[&r.name], "{} (chunk {chunk}, {batching:?})", r.name);
            }
        }
    }
}

/// A request whose prompt is `len` token ids, with a budget of `budget`.
fn long_request(len: usize, budget: usize) -> Request {
    let mut r = requests().swap_remove(1);
    r.name = format!("long{len}");
    r.input = RequestInput::Ids((0..len).map(|i| 3 + (i * 37 % 500) as u32).collect());
    r.max_new_tokens = budget;
    r
}

#[test]
fn running_rows_keep_decoding_while_a_long_prompt_is_prefilled_in_chunks() {
    let engine = engine();
    let short = requests().swap_remove(4);
    let long = long_request(60, 5);
    let options = RunOptions { ignore_eos: true, ..RunOptions::default() };
    let alone = engine.run(std::slice::from_ref(&long), options).pop().expect("one").expect("runs").new_tokens;
    let mut scheduler = Scheduler::new(4).prefill_chunk(8).ignore_eos(true);
    let a = scheduler.admit(&engine, Request { max_new_tokens: 40, ..short }).expect("admitted");
    // Its own prompt (13 tokens) takes two chunks: it decodes once it has produced a token.
    let mut steps = 0;
    while !scheduler.step(&engine).iter().any(|e| matches!(e, Event::Token { id, .. } if *id == a)) {
        steps += 1;
        assert!(steps < 5, "the short row joins");
    }
    let b = scheduler.admit(&engine, long.clone()).expect("admitted");
    // 60 prompt tokens in chunks of 8: 8 steps; the running row produces a token in each of them.
    let mut b_tokens = Vec::new();
    let mut b_first = None;
    for step in 0..12 {
        let events = scheduler.step(&engine);
        assert!(
            events.iter().any(|e| matches!(e, Event::Token { id, .. } if *id == a)),
            "step {step}: the running row produced no token ({events:?})"
        );
        for e in events {
            match e {
                Event::Token { id, token } if id == b => {
                    b_first.get_or_insert(step);
                    b_tokens.push(token);
                }
                Event::Failed { error, .. } => panic!("{error}"),
                _ => {}
            }
        }
    }
    assert_eq!(b_first, Some(7), "the long prompt's first token comes with its last chunk");
    assert_eq!(scheduler.running(), 1, "the long row finished, the other runs");
    assert_eq!(b_tokens, alone, "the chunked prefill gives the same tokens");
}

/// Issue 25, 5: a short prompt admitted behind a long one is prefilled between the long one's chunks (the
/// shortest remaining prefill first, half the budget kept for the oldest), so its first token does not wait
/// for the long prompt; both give the tokens they give alone.
#[test]
fn a_short_prompt_is_not_made_to_wait_for_a_long_prefill() {
    let engine = engine();
    let long = long_request(120, 3);
    let short = Request { max_new_tokens: 3, ..long_request(4, 3) };
    let short = Request { name: "short".into(), ..short };
    let options = RunOptions { ignore_eos: true, ..RunOptions::default() };
    let alone: Vec<Vec<u32>> = [&long, &short]
        .iter()
        .map(|r| engine.run(std::slice::from_ref(*r), options).pop().expect("one").expect("runs").new_tokens)
        .collect();
    let mut scheduler = Scheduler::new(4).prefill_chunk(16).ignore_eos(true);
    let l = scheduler.admit(&engine, long).expect("admitted");
    scheduler.step(&engine);
    let s = scheduler.admit(&engine, short).expect("admitted");
    let (mut first_short, mut first_long) = (None, None);
    let mut tokens: HashMap<SequenceId, Vec<u32>> = HashMap::new();
    for step in 1..40 {
        for e in scheduler.step(&engine) {
            if let Event::Token { id, token } = e {
                tokens.entry(id).or_default().push(token);
                if id == s {
                    first_short.get_or_insert(step);
                }
                if id == l {
                    first_long.get_or_insert(step);
                }
            }
        }
        if scheduler.is_idle() {
            break;
        }
    }
    let (first_short, first_long) = (first_short.expect("short answered"), first_long.expect("long answered"));
    assert!(first_short <= 2, "the short prompt's first token came at step {first_short}");
    assert!(first_short < first_long, "before the long prompt's ({first_long})");
    assert_eq!(tokens[&l], alone[0], "the long prompt's tokens");
    assert_eq!(tokens[&s], alone[1], "the short prompt's tokens");
}

#[test]
fn a_row_cancelled_during_its_prefill_leaves_its_group() {
    let engine = engine();
    let (x, y) = (long_request(30, 6), long_request(21, 4));
    let expected = static_batch(&engine, std::slice::from_ref(&y));
    let mut scheduler = Scheduler::new(4).prefill_chunk(10);
    let ids = [x, y.clone()].map(|r| scheduler.admit(&engine, r).expect("admitted"));
    scheduler.step(&engine);
    assert_eq!(scheduler.running(), 2, "both are being prefilled");
    assert!(scheduler.cancel(ids[0]));
    assert_eq!(scheduler.running(), 1);
    let mut tokens = Vec::new();
    while !scheduler.is_idle() {
        for e in scheduler.step(&engine) {
            match e {
                Event::Finished { id, new_tokens, .. } => {
                    assert_eq!(id, ids[1]);
                    tokens = new_tokens;
                }
                Event::Failed { error, .. } => panic!("{error}"),
                Event::Token { .. } => {}
            }
        }
    }
    assert_eq!(tokens, expected[&y.name]);
    // Cancelling the last row of a group being prefilled empties it.
    let id = scheduler.admit(&engine, y).expect("admitted");
    scheduler.step(&engine);
    assert!(scheduler.cancel(id) && scheduler.is_idle());
}

#[test]
fn static_batching_admits_only_into_an_empty_batch() {
    let engine = engine();
    let requests = requests();
    let mut scheduler = Scheduler::new(8).batching(Batching::Static);
    for r in &requests[..2] {
        scheduler.admit(&engine, r.clone()).expect("admitted");
    }
    scheduler.step(&engine);
    let late = scheduler.admit(&engine, requests[4].clone()).expect("admitted");
    let mut late_started = false;
    while !scheduler.is_idle() {
        let busy = scheduler.running() > 0;
        let events = scheduler.step(&engine);
        let late_token = events.iter().any(|e| matches!(e, Event::Token { id, .. } if *id == late));
        if late_token && !late_started {
            late_started = true;
            assert!(!busy, "the late request started while the first batch still ran");
        }
        if !late_started {
            assert_eq!(scheduler.waiting(), 1, "the late request waits for the batch to drain");
        }
    }
    assert!(late_started);
}

#[test]
fn engine_run_prefills_in_chunks_with_the_same_tokens() {
    let engine = engine();
    let mut requests = requests();
    requests.push(long_request(60, 6));
    let one_pass = RunOptions { prefill_columns: Some(usize::MAX), ..RunOptions::default() };
    let expected = engine.run(&requests, one_pass);
    for columns in [1, 3, 16] {
        let chunked = engine.run(&requests, RunOptions { prefill_columns: Some(columns), ..RunOptions::default() });
        for (a, b) in chunked.iter().zip(&expected) {
            let (a, b) = (a.as_ref().expect("runs"), b.as_ref().expect("runs"));
            assert_eq!(a.new_tokens, b.new_tokens, "{} ({columns} columns per pass)", a.name);
        }
    }
}
