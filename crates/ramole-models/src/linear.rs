//! Layers whose weights are f32 tensors on the device, kept quantized on the host
//! ([`ramole_core::quant::QMatrix`]: the linear layers and the token embedding of a Llama loaded from
//! a GGUF file) or f32 packed on the host ([`PackedMatrix`]).
//!
//! Kept quantized, SmolLM2-135M's Q4_1/Q8_0 file is 0.10 GB in memory instead of 0.65 GB in f32 (the
//! tied embedding is one matrix for the lookup and the LM head), and a decoding step reads that much.
//! The products run on the host, the activations read back from the backend and the result written
//! to it: free on the CPU backends, a copy across devices on a GPU, where [`WeightFormat::Auto`] keeps
//! the weights dense. With f32 activations, products over a few rows (decoding) take the fused kernel
//! ([`QMatrix::matmul`]), over many (prefill) panels of dequantised rows ([`QMatrix::matmul_dequantized`],
//! AVX-512) or the backend's gemm on the dequantised weight; with 8-bit activations
//! ([`WeightFormat::QuantizedInt8`]), [`QMatrix::matmul_int8`] at every size.
//!
//! The same formats hold the linear weights stored in f32 (safetensors models, GGUF F32/F16 matrices)
//! on the host too, where the CPU has AVX-512F: packed once at load into the panels of
//! [`PackedMatrix`] and multiplied by its register-blocked kernel at every size (the backend's gemm
//! would repack them at every product, with AVX2 at most).
//!
//! A linear on the host adds the batch's per-row LoRA update there when it is a [`RowLora::Host`].

use std::fmt;
use std::sync::Arc;

use burn::empty;
use burn::module::{Module, Param};
use burn::nn::Embedding;
use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use ramole_core::gemm::PackedMatrix;
use ramole_core::lora::{HostRows, RowLora};
use ramole_core::quant::QMatrix;

/// Products with f32 activations over at most this many rows (the tokens of all the batch's rows) run
/// on the fused quantized kernel; over more (prefill), on dequantised panels or the backend's gemm
/// (`benches/quant.rs`: the kernel is 1.4–2.4× slower than a gemm at 64 rows, and faster at 1).
pub const HOST_ROWS_MAX: usize = 32;

/// How a model's weights are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WeightFormat {
    /// Every weight in f32 on the device (dequantised at load): the exact reference, training (autodiff
    /// needs the weights as tensors) and GPU backends.
    Dense,
    /// Matrices stored in a block format the host kernel multiplies (GGUF Q4_0, Q4_1, Q8_0) are kept in
    /// it; on the CPU backends the other linear weights are packed f32 on the host where the CPU has
    /// AVX-512F ([`PackedMatrix`]); every other weight is f32 on the device. Each product over host weights
    /// reads the activations back to the host, so this is for CPU backends. The activations stay f32:
    /// the model computes what the dequantised one computes up to f32 rounding.
    Quantized,
    /// [`WeightFormat::Quantized`], with the activations of the products over those weights rounded to
    /// 8 bits per block of 32, as llama.cpp does ([`QMatrix::matmul_int8`]): integer products, faster
    /// where the CPU has AVX-512 VNNI ([`QMatrix::int8_kernel`]; without it, products over more than
    /// [`HOST_ROWS_MAX`] rows keep f32 activations), each activation moved by up to half its block's
    /// step (`max|x| / 254`).
    QuantizedInt8,
    /// On the host CPU backends of this build without autodiff ([`ramole_core::backend::runs_on_host`]):
    /// [`WeightFormat::QuantizedInt8`] where the CPU runs its integer kernel (AVX-512 VNNI), else
    /// [`WeightFormat::Quantized`]; [`WeightFormat::Dense`] on the other backends.
    #[default]
    Auto,
}

impl WeightFormat {
    /// Whether matrices in a block format stay quantized on backend `B` (and f32 linear weights are
    /// packed on the host where the CPU has AVX-512F).
    pub fn keeps_quantized<B: Backend>(self) -> bool {
        match self {
            Self::Dense => false,
            Self::Quantized | Self::QuantizedInt8 => true,
            Self::Auto => ramole_core::backend::runs_on_host::<B>(),
        }
    }

    /// What this format amounts to on backend `B` and this CPU: [`WeightFormat::Auto`] resolved to one of
    /// the others.
    pub fn resolve<B: Backend>(self) -> Self {
        match self {
            Self::Auto if !self.keeps_quantized::<B>() => Self::Dense,
            Self::Auto if self.activations() == Activations::Int8 => Self::QuantizedInt8,
            Self::Auto => Self::Quantized,
            other => other,
        }
    }

    /// The format's name, as `--model-weights` spells it (`dense`, `quantized`, `quantized-int8`, `auto`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Dense => "dense",
            Self::Quantized => "quantized",
            Self::QuantizedInt8 => "quantized-int8",
            Self::Auto => "auto",
        }
    }

    /// How products over the weights kept quantized treat the activations.
    pub fn activations(self) -> Activations {
        match self {
            Self::QuantizedInt8 => Activations::Int8,
            Self::Auto if QMatrix::int8_kernel() => Activations::Int8,
            Self::Dense | Self::Quantized | Self::Auto => Activations::F32,
        }
    }
}

/// How a product over a quantized weight treats the activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Activations {
    /// In f32 ([`QMatrix::matmul`]).
    #[default]
    F32,
    /// Rounded to 8 bits per block of 32 ([`QMatrix::matmul_int8`]); over more than
    /// [`HOST_ROWS_MAX`] rows (prefill) only where the CPU runs the int8 kernels
    /// ([`QMatrix::int8_kernel`]), f32 elsewhere.
    Int8,
}

/// A weight matrix kept quantized on the host: a module with nothing to train or save.
#[derive(Debug, Clone)]
pub struct QuantizedWeight {
    /// The blocks.
    pub matrix: Arc<QMatrix>,
    /// How products over it treat the activations.
    pub activations: Activations,
}

impl fmt::Display for QuantizedWeight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = &self.matrix;
        write!(f, "{} [{}, {}]", q.format(), q.rows(), q.cols())?;
        match self.activations {
            Activations::F32 => Ok(()),
            Activations::Int8 => f.write_str(" × int8 activations"),
        }
    }
}

impl QuantizedWeight {
    /// Whether a product over `tokens` tokens rounds the activations to 8 bits: with
    /// [`Activations::Int8`], over a few tokens always, over more where the CPU runs the int8 kernels.
    fn int8_at(&self, tokens: usize) -> bool {
        self.activations == Activations::Int8 && (tokens <= HOST_ROWS_MAX || QMatrix::int8_kernel())
    }
}

empty!(QuantizedWeight);

/// An f32 weight packed on the host for the AVX-512 panel kernel ([`PackedMatrix`]): a module with
/// nothing to train or save.
#[derive(Debug, Clone)]
pub struct PackedWeight(pub Arc<PackedMatrix>);

impl fmt::Display for PackedWeight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "f32 [{}, {}] packed", self.0.rows(), self.0.cols())
    }
}

empty!(PackedWeight);

/// The weight of a linear layer without bias.
#[derive(Module, Debug)]
pub enum LinearWeight<B: Backend> {
    /// f32 `[d_in, d_out]` on the device.
    Dense(Param<Tensor<B, 2>>),
    /// `[d_out, d_in]` (PyTorch's layout) in blocks, on the host.
    Quantized(QuantizedWeight),
    /// `[d_out, d_in]` in f32, packed on the host in panels of 32 rows (CPU backends with AVX-512F).
    Packed(PackedWeight),
}

impl<B: Backend> LinearWeight<B> {
    /// `x · W`, as one 2-D product over all tokens (so the weight is read once, not once per row).
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, d_in]`
    /// - output: `[batch, seq, d_out]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward_lora(x, None)
    }

    /// `x · W` plus the batch's per-row LoRA update of this layer, if any. A weight on the host adds a
    /// [`RowLora::Host`] update to its product there, before the result goes back to the backend.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, d_in]`
    /// - output: `[batch, seq, d_out]`
    pub fn forward_lora(&self, x: Tensor<B, 3>, lora: Option<&RowLora<B>>) -> Tensor<B, 3> {
        let [b, t, d] = x.dims();
        let d_out = self.dims()[1];
        if !self.on_host(b * t) {
            let y = match self {
                Self::Dense(w) => x.clone().reshape([b * t, d]).matmul(w.val()),
                Self::Quantized(QuantizedWeight { matrix: q, .. }) => {
                    let w =
                        Tensor::<B, 2>::from_data(TensorData::new(q.dequantize(), [q.rows(), q.cols()]), &x.device());
                    x.clone().reshape([b * t, d]).matmul(w.transpose())
                }
                Self::Packed(_) => unreachable!("packed weights multiply on the host"),
            };
            let y = y.reshape([b, t, d_out]);
            return match lora {
                Some(rows) => y + rows.forward(x),
                None => y,
            };
        }
        let (host_lora, device_lora) = match lora {
            Some(RowLora::Host(h)) => (Some(h), None),
            other => (None, other),
        };
        let x_device = device_lora.map(|_| x.clone());
        let device = x.device();
        let x_host = host_f32(x).expect("activations converted to f32");
        let y = self.host_product(&x_host, t, host_lora).expect("a weight on the host");
        let y = Tensor::from_data(TensorData::new(y, [b, t, d_out]), &device);
        match (x_device, device_lora) {
            (Some(x), Some(rows)) => y + rows.forward(x),
            _ => y,
        }
    }

    /// Whether products over `tokens` tokens run on the host: a packed weight always; a quantized one
    /// unless it is a product over many tokens with f32 activations on a CPU without AVX-512F (then
    /// the backend's gemm on the dequantised weight); a dense one never.
    pub fn on_host(&self, tokens: usize) -> bool {
        match self {
            Self::Dense(_) => false,
            Self::Packed(_) => true,
            Self::Quantized(q) => tokens <= HOST_ROWS_MAX || q.int8_at(tokens) || ramole_core::gemm::available(),
        }
    }

    /// `x · Wᵀ` on host values (`x` `[tokens, d_in]` row-major, rows of `seq` tokens each), plus the
    /// rows' host LoRA update; `None` where the product does not run on the host ([`Self::on_host`]).
    pub fn host_product(&self, x: &[f32], seq: usize, lora: Option<&HostRows>) -> Option<Vec<f32>> {
        let d_in = self.dims()[0];
        let tokens = x.len().checked_div(d_in).unwrap_or(0);
        if !self.on_host(tokens) {
            return None;
        }
        let mut y = match self {
            Self::Dense(_) => return None,
            Self::Packed(PackedWeight(p)) => p.matmul(x, tokens),
            Self::Quantized(w) => {
                let q = &w.matrix;
                match (w.int8_at(tokens), tokens > HOST_ROWS_MAX) {
                    (true, _) => q.matmul_int8(x, tokens),
                    (false, true) => q.matmul_dequantized(x, tokens).unwrap_or_else(|| q.matmul(x, tokens)),
                    (false, false) => q.matmul(x, tokens),
                }
            }
        };
        if let Some(h) = lora {
            h.add_to(x, seq, &mut y);
        }
        Some(y)
    }

    /// `[d_in, d_out]`.
    pub fn dims(&self) -> [usize; 2] {
        match self {
            Self::Dense(w) => w.dims(),
            Self::Quantized(QuantizedWeight { matrix: q, .. }) => [q.cols(), q.rows()],
            Self::Packed(PackedWeight(p)) => [p.cols(), p.rows()],
        }
    }

    /// The f32 weight, when dense on the device.
    pub fn dense(&self) -> Option<&Param<Tensor<B, 2>>> {
        match self {
            Self::Dense(w) => Some(w),
            Self::Quantized(_) | Self::Packed(_) => None,
        }
    }

    /// Whether the weight is kept quantized.
    pub fn is_quantized(&self) -> bool {
        matches!(self, Self::Quantized(_))
    }
}

/// A token embedding.
#[derive(Module, Debug)]
pub enum TokenEmbedding<B: Backend> {
    /// f32 `[vocab, d]` on the device.
    Dense(Embedding<B>),
    /// `[vocab, d]` in blocks, on the host: the looked-up rows are dequantised.
    Quantized(QuantizedWeight),
}

impl<B: Backend> TokenEmbedding<B> {
    /// The embedding of every token.
    ///
    /// # Shapes
    /// - `tokens`: `[batch, seq]`
    /// - output: `[batch, seq, d]`
    ///
    /// # Panics
    /// If a token is not below the vocabulary size (the engine checks requests before they get here).
    pub fn forward(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        match self {
            Self::Dense(e) => e.forward(tokens),
            Self::Quantized(QuantizedWeight { matrix: q, .. }) => {
                let [b, t] = tokens.dims();
                let device = tokens.device();
                let ids = tokens.into_data().convert::<i64>().into_vec::<i64>().expect("converted to i64");
                let d = q.cols();
                let mut out = vec![0f32; ids.len() * d];
                for (&id, row) in ids.iter().zip(out.chunks_exact_mut(d.max(1))) {
                    let id = usize::try_from(id).ok().filter(|&i| i < q.rows());
                    let id = id.unwrap_or_else(|| panic!("token id outside the vocabulary of {} tokens", q.rows()));
                    q.dequantize_row(id, row);
                }
                Tensor::from_data(TensorData::new(out, [b, t, d]), &device)
            }
        }
    }

    /// `[vocab, d]`.
    pub fn dims(&self) -> [usize; 2] {
        match self {
            Self::Dense(e) => e.weight.dims(),
            Self::Quantized(QuantizedWeight { matrix: q, .. }) => [q.rows(), q.cols()],
        }
    }

    /// The f32 table, when dense.
    pub fn dense(&self) -> Option<&Param<Tensor<B, 2>>> {
        match self {
            Self::Dense(e) => Some(&e.weight),
            Self::Quantized(_) => None,
        }
    }
}

/// The values of an activation tensor on the host, as f32 (`None` if the backend's data cannot be
/// read as f32: callers fall back to burn's ops or fail loudly).
pub(crate) fn host_f32<B: Backend, const D: usize>(x: Tensor<B, D>) -> Option<Vec<f32>> {
    x.into_data().convert::<f32>().into_vec::<f32>().ok()
}
