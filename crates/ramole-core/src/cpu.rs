//! The instruction sets the host kernels (`quant`, `attention`, `gemm`, `lora`, `activation`) pick from
//! at run time, and what several of them share (the vectorised exponential).

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

/// Lanes of the element-wise kernels (one AVX-512 vector; two AVX2 ones).
pub(crate) const LANES: usize = 16;

/// `eˣ` of each lane for `x ≤ 0` (softmax's shifted scores; `-∞` gives 0): Cephes' `expf` (`x` split
/// into `n·ln 2 + r`, a degree-5 polynomial in `r`, `2ⁿ` from the exponent bits) in arithmetic that
/// vectorises. Relative error a few units in the last place.
#[inline(always)]
pub(crate) fn exp_lanes<const FMA: bool>(x: &mut [f32; LANES]) {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer in the low mantissa bits
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const P: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5];
    for v in x.iter_mut() {
        let xi = *v;
        let c = xi.max(-87.0);
        let t = madd::<FMA>(c, LOG2E, ROUND);
        let n_int = t.to_bits() as i32 - ROUND.to_bits() as i32;
        let n = t - ROUND;
        let r = madd::<FMA>(n, -LN2_LO, madd::<FMA>(n, -LN2_HI, c));
        let mut poly = P[0];
        for &coef in &P[1..] {
            poly = madd::<FMA>(poly, r, coef);
        }
        let y = madd::<FMA>(poly, r * r, r) + 1.0;
        let scale = f32::from_bits(((n_int + 127) as u32) << 23);
        *v = if xi < -87.0 { 0.0 } else { y * scale };
    }
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
