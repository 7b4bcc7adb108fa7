//! The instruction sets the host kernels (`quant`, `attention`, `gemm`) pick from at run time.

/// Which implementation of a host kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// Plain Rust (any CPU).
    Plain,
    /// AVX2 with fused multiply-add (x86-64, detected at run time).
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512F (x86-64, detected at run time; such CPUs run the AVX2 kernels too).
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Kernel {
    /// The widest kernel this CPU runs.
    pub(crate) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return match std::arch::is_x86_feature_detected!("avx512f") {
                true => Self::Avx512,
                false => Self::Avx2,
            };
        }
        Self::Plain
    }
}

/// `a · b + c`, fused where the caller's target has FMA (`FMA`), plain otherwise (a fused `mul_add`
/// without the instruction is a slow library call).
#[inline(always)]
pub(crate) fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// Pseudo-random values in `[-0.5, 0.5)` for the kernels' tests: a linear congruential sequence from
/// `seed`, its top 24 bits as the fraction.
#[cfg(test)]
pub(crate) fn test_values(n: usize, seed: u64) -> Vec<f32> {
    const A: u64 = 6_364_136_223_846_793_005;
    const C: u64 = 1_442_695_040_888_963_407;
    let mut state = seed.wrapping_mul(A).wrapping_add(C);
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(A).wrapping_add(C);
            ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}
