//! Continuous batching on the tiny Llama fixture: requests joining a running batch at any step, in any
//! order, produce the greedy tokens of `Engine::run` (and so of the PyTorch + PEFT reference); rows
//! leave as they finish or are cancelled without changing the others.

mod common;

use std::collections::HashMap;

use common::token_ids;
use ramole_batch::{Engine, Event, FinishReason, Request, RequestFile, RunOptions, Scheduler, SequenceId};
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
    let mut scheduler = Scheduler::new(max_rows);
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
