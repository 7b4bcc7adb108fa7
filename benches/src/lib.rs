//! Criterion benchmarks of RAMoLE-rs live in `benches/`.
