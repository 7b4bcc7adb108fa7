//! `matmul` on the selected backend gives the plain product for every operand layout the model and
//! LoRA training produce: transposed views (the backward pass's `grad · Wᵀ`), swapped batch axes,
//! broadcast (expanded) batches. Guards the vendored burn-candle patch (vendor/README.md), which hands
//! some of these layouts to candle's gemm without a copy.

use burn::tensor::{Tensor, TensorData};
use proptest::prelude::*;
use ramole_core::backend::{Selected, device};

type T3 = Tensor<Selected, 3>;

/// `[b, m, k] · [b, k, n]` on the host, row-major.
fn host_matmul(a: &[f32], b: &[f32], (bs, m, k, n): (usize, usize, usize, usize)) -> Vec<f32> {
    let mut out = vec![0.0f32; bs * m * n];
    for s in 0..bs {
        for i in 0..m {
            for j in 0..n {
                out[(s * m + i) * n + j] = (0..k).map(|p| a[(s * m + i) * k + p] * b[(s * k + p) * n + j]).sum::<f32>();
            }
        }
    }
    out
}

fn values(t: T3) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

fn close(got: &[f32], want: &[f32]) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        prop_assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{} vs {}", g, w);
    }
    Ok(())
}

/// Random data for a shape.
fn data(len: usize, seed: u64) -> Vec<f32> {
    (0..len).map(|i| (((i as u64 * 2_654_435_761 + seed * 97) % 1000) as f32 / 500.0) - 1.0).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn every_layout_gives_the_plain_product(
        bs in 1usize..4, m in 1usize..40, k in 1usize..40, n in 1usize..40, seed in 0u64..1000
    ) {
        let dev = device();
        let a = data(bs * m * k, seed);
        let b = data(bs * k * n, seed + 1);
        let want = host_matmul(&a, &b, (bs, m, k, n));
        let ta = T3::from_data(TensorData::new(a.clone(), [bs, m, k]), &dev);
        let tb = T3::from_data(TensorData::new(b.clone(), [bs, k, n]), &dev);
        // Contiguous.
        close(&values(ta.clone().matmul(tb.clone())), &want)?;
        // Transposed views of contiguous transposes (what `x · Wᵀ` and `q · kᵀ` look like).
        let a_t = ta.clone().swap_dims(1, 2).contiguous_copy().swap_dims(1, 2);
        let b_t = tb.clone().swap_dims(1, 2).contiguous_copy().swap_dims(1, 2);
        close(&values(a_t.clone().matmul(tb.clone())), &want)?;
        close(&values(ta.clone().matmul(b_t.clone())), &want)?;
        close(&values(a_t.matmul(b_t)), &want)?;
        // A batch whose axis was swapped with another: not packed, must still be right.
        let a_sw = T3::from_data(TensorData::new(transpose01(&a, bs, m, k), [m, bs, k]), &dev).swap_dims(0, 1);
        close(&values(a_sw.matmul(tb.clone())), &want)?;
        // One matrix broadcast over the batch (the LoRA factor of every row in training).
        let a0 = ta.clone().slice([0..1, 0..m, 0..k]).expand([bs, m, k]);
        let want0 = host_matmul(&(0..bs).flat_map(|_| a[..m * k].to_vec()).collect::<Vec<_>>(), &b, (bs, m, k, n));
        close(&values(a0.clone().matmul(tb.clone())), &want0)?;
        close(&values(a0.matmul(tb.swap_dims(1, 2).contiguous_copy().swap_dims(1, 2))), &want0)?;
        // 2-D: a weight used transposed.
        let w = Tensor::<Selected, 2>::from_data(TensorData::new(b[..k * n].to_vec(), [k, n]), &dev);
        let w_t = w.clone().transpose().contiguous_copy().transpose();
        let x = Tensor::<Selected, 2>::from_data(TensorData::new(a[..m * k].to_vec(), [m, k]), &dev);
        let want2 = host_matmul(&a[..m * k], &b[..k * n], (1, m, k, n));
        let got2: Vec<f32> = x.matmul(w_t).into_data().iter::<f32>().collect();
        close(&got2, &want2)?;
    }
}

/// `[bs, m, k]` → `[m, bs, k]` on the host.
fn transpose01(a: &[f32], bs: usize, m: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0.0; a.len()];
    for s in 0..bs {
        for i in 0..m {
            for p in 0..k {
                out[(i * bs + s) * k + p] = a[(s * m + i) * k + p];
            }
        }
    }
    out
}

/// A contiguous copy of a tensor through the host (whatever the backend's own layout rules).
trait ContiguousCopy {
    fn contiguous_copy(self) -> Self;
}

impl<const D: usize> ContiguousCopy for Tensor<Selected, D> {
    fn contiguous_copy(self) -> Self {
        let dev = self.device();
        Tensor::from_data(self.into_data(), &dev)
    }
}
