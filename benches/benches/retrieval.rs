//! Retrieval benchmarks: exact cosine top-10 over 1k / 10k / 100k LoRAs (384-dim, random unit
//! vectors; one query, through the index's search (two passes from 4096 LoRAs) and through the plain
//! f32 scan, and a batch of 32), and sentence-embedding throughput of the real
//! all-MiniLM-L6-v2 at batch 1 and 32 (skipped, with a message, when the asset is not cached).
//!
//! `cargo bench -p ramole-benches --bench retrieval`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ramole_assets::{AssetCache, MINILM};
use ramole_core::backend::{self, Selected};
use ramole_retriever::{DEFAULT_INSTRUCTION, Index, SentenceEncoder};

const DIM: usize = 384;

fn random_vectors(n: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut s = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    (0..n)
        .map(|_| {
            (0..DIM)
                .map(|_| {
                    s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                })
                .collect()
        })
        .collect()
}

fn top_k(c: &mut Criterion) {
    let queries = random_vectors(64, 7);
    let mut group = c.benchmark_group("retrieval/top10");
    for n in [1_000usize, 10_000, 100_000] {
        let mut index = Index::new(DIM);
        for (i, v) in random_vectors(n, n as u64).into_iter().enumerate() {
            index.add(&format!("lora-{i}"), v).expect("add");
        }
        group.throughput(Throughput::Elements(1));
        let mut q = 0;
        group.bench_with_input(BenchmarkId::new("1_query", n), &index, |b, index| {
            b.iter(|| {
                q = (q + 1) % queries.len(); // a different query each time
                black_box(index.top_k(&queries[q], 10))
            })
        });
        // The plain f32 scan of every row, the reference the two-pass search above equals.
        let mut q = 0;
        group.bench_with_input(BenchmarkId::new("1_query_f32_scan", n), &index, |b, index| {
            b.iter(|| {
                q = (q + 1) % queries.len();
                black_box(index.search_exhaustive(std::slice::from_ref(&queries[q]), 10))
            })
        });
        group.throughput(Throughput::Elements(32));
        let batch = queries[..32].to_vec();
        group.bench_with_input(BenchmarkId::new("32_queries", n), &index, |b, index| {
            b.iter(|| black_box(index.top_k_batch(&batch, 10)))
        });
    }
    group.finish();
}

fn embed(c: &mut Criterion) {
    let Ok(cache) = AssetCache::from_env() else {
        eprintln!("retrieval/embed skipped: no asset cache ($RAMOLE_HOME or $HOME)");
        return;
    };
    if !cache.root().join("assets").join(MINILM.name).join("model.safetensors").is_file() {
        eprintln!("retrieval/embed skipped: all-MiniLM-L6-v2 is not cached (run `ramole fetch minilm` first)");
        return;
    }
    let encoder = match cache
        .minilm_dir()
        .map_err(|e| e.to_string())
        .and_then(|dir| SentenceEncoder::<Selected>::load(dir, &backend::device()).map_err(|e| e.to_string()))
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("retrieval/embed skipped: {e}");
            return;
        }
    };
    let topics =
        ["What is 80 plus 29?", "Translate into French: the cat sleeps.", "Is this review positive? I loved it."];
    let texts: Vec<String> =
        (0..64).map(|i| format!("{DEFAULT_INSTRUCTION}{} (item {i})", topics[i % topics.len()])).collect();
    let mut group = c.benchmark_group(format!("retrieval/embed ({})", backend::NAME));
    group.sample_size(10);
    for batch in [1usize, 32] {
        group.throughput(Throughput::Elements(batch as u64));
        let mut start = 0;
        group.bench_function(BenchmarkId::new("batch", batch), |b| {
            b.iter(|| {
                start = (start + batch) % (texts.len() - batch + 1);
                black_box(encoder.embed(&texts[start..start + batch], batch).expect("embed"))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, top_k, embed);
criterion_main!(benches);
