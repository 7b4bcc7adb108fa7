//! The backend, chosen at compile time by a cargo feature.
//!
//! | feature | backend | where it runs |
//! |---|---|---|
//! | `candle` (default) | burn-candle, f32 | CPU (the fastest CPU backend measured here) |
//! | `flex` | burn-flex, f32 | CPU (pure Rust) |
//! | `wgpu` | burn-wgpu, f32 | Vulkan / Metal / DX12 GPUs, or Mesa's lavapipe on a CPU |
//! | `cuda` | burn-cuda, f32 | NVIDIA GPUs (needs libcuda at run time) |
//!
//! When several are enabled the first of `cuda`, `wgpu`, `flex`, `candle` wins, so enabling a GPU
//! feature on top of the defaults selects it. All model code is generic over
//! [`burn::tensor::backend::Backend`]; only binaries name [`Selected`].

#[cfg(not(any(feature = "candle", feature = "flex", feature = "wgpu", feature = "cuda")))]
compile_error!("ramole-core needs one backend feature: `candle` (default), `flex`, `wgpu` or `cuda`");

/// The backend this build selected.
#[cfg(feature = "cuda")]
pub type Selected = burn::backend::Cuda<f32, i32>;
/// The backend this build selected.
#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
pub type Selected = burn::backend::Wgpu<f32, i32>;
/// The backend this build selected.
#[cfg(all(feature = "flex", not(any(feature = "cuda", feature = "wgpu"))))]
pub type Selected = burn::backend::Flex;
/// The backend this build selected. (burn marks burn-candle deprecated for future releases; with
/// burn pinned at 0.21.0 it is the fastest CPU backend here, and `flex` is the drop-in alternative.)
#[cfg(all(feature = "candle", not(any(feature = "cuda", feature = "wgpu", feature = "flex"))))]
#[allow(deprecated)]
pub type Selected = burn::backend::Candle<f32, i64>;

/// [`Selected`] with automatic differentiation, for training.
pub type SelectedAutodiff = burn::backend::Autodiff<Selected>;

/// The name of the selected backend, for logs and reports.
pub const NAME: &str = if cfg!(feature = "cuda") {
    "cuda"
} else if cfg!(feature = "wgpu") {
    "wgpu"
} else if cfg!(feature = "flex") {
    "flex (CPU)"
} else {
    "candle (CPU)"
};

/// The default device of the selected backend.
pub fn device() -> burn::tensor::Device<Selected> {
    Default::default()
}

/// Whether `B` is one of this build's CPU backends (`candle`, `flex`) without autodiff: where weights
/// kept quantized on the host ([`crate::quant`]) are multiplied without a copy across devices.
pub fn runs_on_host<B: burn::tensor::backend::Backend>() -> bool {
    #[allow(unused_imports)]
    use std::any::TypeId;
    #[cfg(feature = "candle")]
    #[allow(deprecated)]
    if TypeId::of::<B>() == TypeId::of::<burn::backend::Candle<f32, i64>>() {
        return true;
    }
    #[cfg(feature = "flex")]
    if TypeId::of::<B>() == TypeId::of::<burn::backend::Flex>() {
        return true;
    }
    false
}

/// Runs `f` on one of rayon's worker threads (at once when called from one), and returns its result.
///
/// The host kernels ([`crate::quant`], [`crate::attention`], [`crate::gemm`]) split their work with
/// rayon. Called from a thread outside rayon's pool, each split hands its tasks to the pool and puts
/// the calling thread to sleep until they are done: two context switches per product, and a decoding
/// step makes a few hundred products. Called from a worker, the worker takes part and the other
/// workers steal from it. So a whole decoding step should run here: one hand-over per step
/// (`ramole_batch::Engine::run` and `Scheduler::step` do; docs/performance.md: batch-1 decoding
/// 105 → 140 tok/s on SmolLM2 with this alone). `f` must not wait on other rayon work it did not
/// start.
pub fn on_compute_threads<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match rayon::current_thread_index() {
        Some(_) => f(),
        None => rayon::scope(|_| f()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_runs_on_a_worker_and_its_result_comes_back() {
        assert_eq!(rayon::current_thread_index(), None, "the test thread is not a worker");
        let (inside, value) = on_compute_threads(|| (rayon::current_thread_index(), 6 * 7));
        assert!(inside.is_some(), "ran on a worker");
        assert_eq!(value, 42);
        // From a worker, in place.
        let nested = on_compute_threads(|| {
            let here = rayon::current_thread_index();
            (here, on_compute_threads(rayon::current_thread_index))
        });
        assert_eq!(nested.0, nested.1);
    }
}
