//! Quantized weights (issue 8): `y = x · Wᵀ` read from GGML blocks kept in memory
//! (`ramole_core::quant::QMatrix::matmul`, and `matmul_int8` with the activations rounded to 8 bits) against the dense f32 product on the selected backend, for
//! SmolLM2-135M's matrix shapes at decode (1 and 16 rows) and prefill (64 and 512 rows).

use burn::tensor::{Distribution, Tensor};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ramole_core::backend::{Selected, device};
use ramole_core::quant::{BLOCK, QMatrix, QuantFormat};

/// GGML bytes of random blocks (scales in ±0.05, random values).
fn ggml(format: QuantFormat, rows: usize, cols: usize) -> Vec<u8> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (s >> 33) as u32
    };
    let quant_bytes = format.block_bytes() - if format == QuantFormat::Q4_1 { 4 } else { 2 };
    let mut raw = Vec::with_capacity(rows * cols / BLOCK * format.block_bytes());
    for _ in 0..rows * cols / BLOCK {
        let scale = |n: u32| half::f16::from_f32((n % 1001) as f32 / 10_000.0 - 0.05).to_le_bytes();
        raw.extend(scale(next()));
        if format == QuantFormat::Q4_1 {
            raw.extend(scale(next()));
        }
        raw.extend((0..quant_bytes).map(|_| next() as u8));
    }
    raw
}

fn quant(c: &mut Criterion) {
    let dev = device();
    let shapes = [
        ("q_o_576x576_q4_1", QuantFormat::Q4_1, 576, 576),
        ("gate_up_1536x576_q4_1", QuantFormat::Q4_1, 1536, 576),
        ("down_576x1536_q4_1", QuantFormat::Q4_1, 576, 1536),
        ("lm_head_49152x576_q8_0", QuantFormat::Q8_0, 49152, 576),
    ];
    let mut group = c.benchmark_group("quant_matmul");
    group.sample_size(20);
    for (name, format, rows, cols) in shapes {
        let q = QMatrix::from_ggml(format, rows, cols, &ggml(format, rows, cols), name).expect("valid blocks");
        let w = Tensor::<Selected, 1>::from_floats(q.dequantize().as_slice(), &dev).reshape([rows, cols]).transpose();
        let w = w.clone() + w.zeros_like(); // contiguous [cols, rows], as the dense model keeps it
        for m in [1usize, 4, 8, 16, 64, 512] {
            if rows > 10_000 && m > 16 {
                continue; // the LM head runs on the last position of each row only
            }
            let x: Vec<f32> = (0..m * cols).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
            group.bench_with_input(BenchmarkId::new(format!("{name}/quantized"), m), &m, |b, &m| {
                b.iter(|| q.matmul(&x, m))
            });
            group.bench_with_input(BenchmarkId::new(format!("{name}/quantized_int8"), m), &m, |b, &m| {
                b.iter(|| q.matmul_int8(&x, m))
            });
            if m >= 64 {
                group.bench_with_input(BenchmarkId::new(format!("{name}/panels"), m), &m, |b, &m| {
                    b.iter(|| q.matmul_dequantized(&x, m))
                });
            }
            let xt = Tensor::<Selected, 2>::random([m, cols], Distribution::Normal(0.0, 1.0), &dev);
            group.bench_with_input(BenchmarkId::new(format!("{name}/dense_f32"), m), &m, |b, _| {
                b.iter(|| xt.clone().matmul(w.clone()).into_data())
            });
        }
    }
    group.finish();
}

/// f32 weights packed at load (`ramole_core::gemm::PackedMatrix`, AVX-512F only) at the 58 M random
/// Llama's shapes for its B=16 × 64 prefill (1 024 rows): the kernel's share of issue 8's batch prefill.
fn packed(c: &mut Criterion) {
    let mut group = c.benchmark_group("packed_f32");
    group.sample_size(10);
    let m = 1024;
    for (name, n, k) in [("q_512x512", 512, 512), ("gate_up_1376x512", 1376, 512), ("down_512x1376", 512, 1376)] {
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919) % 1000) as f32 / 50_000.0 - 0.01).collect();
        let Some(packed) = ramole_core::gemm::PackedMatrix::pack(&w, n, k) else { return };
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 104_729) % 1000) as f32 / 500.0 - 1.0).collect();
        group.throughput(criterion::Throughput::Elements((2 * m * n * k) as u64));
        group.bench_with_input(BenchmarkId::new(name, m), &m, |b, &m| b.iter(|| packed.matmul(&x, m)));
    }
    group.finish();
}

criterion_group!(benches, quant, packed);
criterion_main!(benches);
