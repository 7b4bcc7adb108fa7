//! Decode throughput of one heterogeneous batch on SmolLM2-135M-Instruct (fetched into the asset
//! cache): (a) no adapters, (b) 16 rows with 16 distinct adapters, (c) 16 rows each mixing 3 of 16
//! adapters. Criterion reports the time of the decoding steps only (prefill excluded) per scenario;
//! compare the three as ratios from one run. `ramole bench-decode` prints tokens/s directly.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use ramole_assets::AssetCache;
use ramole_batch::Engine;
use ramole_batch::bench::{DecodeBench, run_scenario};
use ramole_core::backend::{Selected, device};

fn decode(c: &mut Criterion) {
    let gguf = match AssetCache::from_env().and_then(|cache| cache.smollm2_gguf()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("skipping the decode bench: SmolLM2 is not available ({e})");
            return;
        }
    };
    let mut engine = Engine::<Selected>::load(&gguf, &device()).expect("SmolLM2 loads");
    let bench = DecodeBench { new_tokens: 16, ..DecodeBench::default() };
    let dir = tempfile::tempdir().expect("tmp");
    bench.load_adapters(&mut engine, dir.path()).expect("synthetic adapters");
    let mut group = c.benchmark_group("decode_batch16");
    group.sample_size(10).measurement_time(Duration::from_secs(30)).warm_up_time(Duration::from_secs(5));
    for scenario in bench.scenarios(engine.config().vocab_size) {
        group.bench_function(scenario.label, |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| Duration::from_secs_f64(run_scenario(&engine, &scenario).expect("runs").decode_secs))
                    .sum()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
