//! burn's CPU backends side by side on the shapes that dominate decoding a batch of 16 on SmolLM2
//! (d = 576, MLP 1536, vocab 49152) and a square 1024² matmul. The default backend is the fastest one
//! here. Run: `cargo bench -p ramole-benches --bench backends --features compare-backends`.
#![allow(deprecated)] // burn-candle is marked deprecated for later burn releases

use burn::tensor::{Distribution, Tensor, backend::Backend};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn matmuls<B: Backend>(c: &mut Criterion, name: &str) {
    let dev = B::Device::default();
    let mut group = c.benchmark_group(format!("matmul_{name}"));
    group.sample_size(20);
    for (m, k, n) in [(1024usize, 1024usize, 1024usize), (16, 576, 1536), (16, 1536, 576), (16, 576, 49152)] {
        let a = Tensor::<B, 2>::random([m, k], Distribution::Normal(0.0, 1.0), &dev);
        let b = Tensor::<B, 2>::random([k, n], Distribution::Normal(0.0, 1.0), &dev);
        group.throughput(Throughput::Elements((2 * m * k * n) as u64)); // FLOPs
        group.bench_with_input(BenchmarkId::from_parameter(format!("{m}x{k}x{n}")), &(a, b), |bench, (a, b)| {
            bench.iter(|| a.clone().matmul(b.clone()).slice([0..1, 0..1]).into_scalar())
        });
    }
    group.finish();
}

fn backends(c: &mut Criterion) {
    matmuls::<burn::backend::Candle<f32, i64>>(c, "candle");
    matmuls::<burn::backend::Flex>(c, "flex");
    matmuls::<burn::backend::NdArray<f32>>(c, "ndarray");
}

criterion_group!(benches, backends);
criterion_main!(benches);
