//! The two-pass search of large pools (int8 codes, then exact re-scoring) returns exactly what the
//! plain f32 scan returns: the same names in the same order with bit-identical scores, whatever the
//! vectors (clustered, duplicated, tied), the query count, `k`, and after removals.

use proptest::prelude::*;
use ramole_retriever::Index;
use ramole_retriever::index::CODED_MIN_ROWS;

fn lcg(seed: u64) -> impl FnMut() -> f32 {
    let mut s = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

/// `n` vectors of `dim`: `clusters` centres with small noise (near-ties), and every 97th vector a
/// copy of an earlier one (exact ties, broken by name).
fn pool(n: usize, dim: usize, clusters: usize, noise: f32, seed: u64) -> Index {
    let mut next = lcg(seed);
    let centres: Vec<Vec<f32>> = (0..clusters.max(1)).map(|_| (0..dim).map(|_| next()).collect()).collect();
    let mut index = Index::new(dim);
    let mut added: Vec<Vec<f32>> = Vec::with_capacity(n);
    for i in 0..n {
        let v: Vec<f32> = if i % 97 == 96 {
            added[i / 2].clone()
        } else {
            centres[i % centres.len()].iter().map(|c| c + noise * next()).collect()
        };
        index.add(&format!("lora-{i:05}"), v.clone()).expect("add");
        added.push(v);
    }
    index
}

fn assert_same(index: &Index, queries: &[Vec<f32>], k: usize) {
    let fast = index.search(queries, k).expect("search");
    let plain = index.search_exhaustive(queries, k).expect("search");
    assert_eq!(fast.len(), plain.len());
    for (f, p) in fast.iter().zip(&plain) {
        assert_eq!(f.len(), p.len());
        for (a, b) in f.iter().zip(p) {
            assert_eq!(a.0, b.0);
            assert_eq!(a.1.to_bits(), b.1.to_bits(), "{} scores {} vs {}", a.0, a.1, b.1);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn the_coded_search_equals_the_plain_scan(
        seed in 0u64..1_000_000,
        clusters in prop::sample::select(vec![1usize, 8, 1000, 100_000]),
        noise in prop::sample::select(vec![0.0f32, 0.01, 0.2, 1.0]),
        k in prop::sample::select(vec![1usize, 3, 10, 64]),
        n_queries in 1usize..4,
        dim in prop::sample::select(vec![31usize, 384]),
    ) {
        let n = CODED_MIN_ROWS + 1000;
        let mut index = pool(n, dim, clusters, noise, seed);
        let mut next = lcg(seed ^ 0xABCD);
        // Queries: random, and a stored vector itself (the best match exists and ties with its copies).
        let mut queries: Vec<Vec<f32>> = (0..n_queries).map(|_| (0..dim).map(|_| next()).collect()).collect();
        queries[0] = index.vector("lora-00042").expect("stored").to_vec();
        assert_same(&index, &queries, k);
        // Removals move the last rows (codes included) into the freed slots.
        for i in (0..n).step_by(7) {
            index.remove(&format!("lora-{i:05}")).expect("remove");
        }
        prop_assert!(index.len() >= CODED_MIN_ROWS, "still searched in two passes");
        queries[0] = index.vector("lora-00043").expect("stored").to_vec();
        assert_same(&index, &queries, k);
    }
}

#[test]
fn k_beyond_the_pool_and_clusters_of_identical_vectors_agree() {
    let index = pool(CODED_MIN_ROWS, 16, 3, 0.0, 1);
    let queries = vec![vec![1.0; 16]];
    assert_same(&index, &queries, CODED_MIN_ROWS + 10);
    let hits = index.search(&queries, 5).expect("search");
    assert_eq!(hits[0].len(), 5);
    // Three clusters of identical vectors: the top 5 are one cluster's first names, by name.
    assert!(hits[0].windows(2).all(|w| w[0].1 == w[1].1 && w[0].0 < w[1].0), "{hits:?}");
}
