//! A preallocated key/value buffer written in place: the storage of one attention layer's KV cache.
//!
//! A [`KvBuffer`] holds `[rows, heads, capacity, head_dim]` and the number of positions written
//! (`len`). [`KvBuffer::append`] writes the new positions at `len..len + t`, [`KvBuffer::view`] is
//! `0..len` without a copy (readers that take the host memory in place, [`KvBuffer::with_host`], need
//! no view); only when the capacity runs out is the buffer reallocated (doubling), so a decoding
//! step costs the new keys alone, not a copy of the whole past as a concatenation does.
//!
//! How "in place" is reached per backend:
//! - candle (the default CPU backend): burn-candle's `slice_assign` builds a new tensor (candle tensors
//!   are immutable through burn), so the buffer is a candle tensor owned here, written with candle's
//!   `slice_set` and handed to burn as views. Writes only ever go to positions past every view handed
//!   out before, so earlier views never see a change; a `KvBuffer` is not `Clone` for that reason.
//! - every other backend: burn's `slice_assign` into the preallocated tensor, which the cubecl
//!   backends (wgpu, cuda) and flex perform in place when the buffer's handle is not shared.
//! - under autodiff (training) the buffer holds what it was given (training runs one forward over
//!   the whole sequence) and grows by concatenation, which keeps the graph.

use burn::tensor::{Tensor, backend::Backend};

/// One layer's keys or values: `[rows, heads, capacity, head_dim]` of which positions `0..len` are
/// written.
#[derive(Debug)]
pub struct KvBuffer<B: Backend> {
    /// The buffer, when burn's ops hold it (every backend but candle, and candle under autodiff).
    burn: Option<Tensor<B, 4>>,
    /// The buffer, when it is a candle tensor written in place.
    #[cfg(feature = "candle")]
    candle: Option<candle::Buffer>,
    /// `[rows, heads, head_dim]`.
    dims: [usize; 3],
    len: usize,
    device: B::Device,
}

impl<B: Backend> KvBuffer<B> {
    /// A buffer holding `first` (`[rows, heads, t, head_dim]`) with room for at least `capacity`
    /// positions.
    pub fn new(first: Tensor<B, 4>, capacity: usize) -> Self {
        let [rows, heads, t, hd] = first.dims();
        let cap = capacity.max(t);
        let device = first.device();
        let mut buf = Self {
            burn: None,
            #[cfg(feature = "candle")]
            candle: None,
            dims: [rows, heads, hd],
            len: t,
            device: device.clone(),
        };
        #[cfg(feature = "candle")]
        if let Some(c) = candle::Buffer::new::<B>(&first, cap) {
            buf.candle = Some(c);
            return buf;
        }
        buf.burn = Some(if cap == t || B::ad_enabled(&device) {
            first
        } else {
            let zeros = Tensor::<B, 4>::zeros([rows, heads, cap, hd], &device);
            zeros.slice_assign([0..rows, 0..heads, 0..t, 0..hd], first)
        });
        buf
    }

    /// [`Self::new`] from host values laid out `[rows, t, heads, head_dim]` (`dims`), the layout of the
    /// key and value projections' output: on the candle backend written straight into the buffer (one
    /// pass), elsewhere through a tensor.
    ///
    /// # Panics
    /// If `values` does not hold `dims`' product.
    pub fn from_host(values: &[f32], dims: [usize; 4], capacity: usize, device: &B::Device) -> Self {
        let [rows, t, heads, hd] = dims;
        assert_eq!(values.len(), rows * t * heads * hd, "keys or values of [{rows}, {t}, {heads}, {hd}]");
        #[cfg(feature = "candle")]
        if let Some(c) = candle::Buffer::from_host::<B>(values, dims, capacity.max(t)) {
            return Self { burn: None, candle: Some(c), dims: [rows, heads, hd], len: t, device: device.clone() };
        }
        Self::new(heads_first_tensor(values, dims, device), capacity)
    }

    /// [`Self::append`] from host values laid out `[rows, t, heads, head_dim]`.
    ///
    /// # Panics
    /// If `values` is not `t` positions of this buffer's rows and heads.
    pub fn append_host(&mut self, values: &[f32], t: usize) {
        let [rows, heads, hd] = self.dims;
        let dims = [rows, t, heads, hd];
        assert_eq!(values.len(), rows * t * heads * hd, "keys or values of [{rows}, {t}, {heads}, {hd}]");
        #[cfg(feature = "candle")]
        if let Some(c) = &mut self.candle
            && c.append_host(self.len, values, dims)
        {
            self.len += t;
            return;
        }
        let value = heads_first_tensor(values, dims, &self.device);
        self.append(value);
    }

    /// Whether this backend's buffers are host memory that [`Self::with_host`] reads in place (the
    /// candle backend's, in f32, without autodiff).
    pub fn holds_host_values() -> bool {
        #[cfg(feature = "candle")]
        if candle::is_candle_f32::<B>() {
            return true;
        }
        false
    }

    /// Positions written.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Rows (the batch dimension).
    pub fn rows(&self) -> usize {
        self.dims[0]
    }

    /// Positions the buffer holds before it must grow.
    pub fn capacity(&self) -> usize {
        #[cfg(feature = "candle")]
        if let Some(c) = &self.candle {
            return c.capacity();
        }
        self.burn.as_ref().map_or(self.len, |t| t.dims()[2])
    }

    /// Writes `value` (`[rows, heads, t, head_dim]`) at positions `len..len + t` ([`KvBuffer::view`]
    /// is then the whole written sequence, `[rows, heads, len + t, head_dim]`).
    pub fn append(&mut self, value: Tensor<B, 4>) {
        let [rows, heads, t, hd] = value.dims();
        let (len, end) = (self.len, self.len + t);
        #[cfg(feature = "candle")]
        if let Some(c) = &mut self.candle {
            if c.append::<B>(len, &value) {
                self.len = end;
                return;
            }
            // Candle refused (it should not): burn's ops from here on.
            self.burn = Some(self.view());
            self.candle = None;
        }
        let device = self.device.clone();
        // Moved out (not cloned), so a backend that writes in place sees a handle nobody shares.
        let store = self.burn.take().unwrap_or_else(|| Tensor::zeros([rows, heads, len, hd], &device));
        let cap = store.dims()[2];
        let store = if B::ad_enabled(&device) {
            Tensor::cat(vec![store.narrow(2, 0, len), value], 2)
        } else if end <= cap {
            store.slice_assign([0..rows, 0..heads, len..end, 0..hd], value)
        } else {
            let grown = (2 * cap).max(end);
            let buf = Tensor::<B, 4>::zeros([rows, heads, grown, hd], &device);
            let buf = buf.slice_assign([0..rows, 0..heads, 0..len, 0..hd], store.narrow(2, 0, len));
            buf.slice_assign([0..rows, 0..heads, len..end, 0..hd], value)
        };
        self.burn = Some(store);
        self.len = end;
    }

    /// `[rows, heads, head_dim]`.
    pub fn dims(&self) -> [usize; 3] {
        self.dims
    }

    /// Calls `f` with the buffer's values in host memory, read in place: `[rows, heads, capacity,
    /// head_dim]` contiguous, positions `0..len` written. `None` where the buffer is not host memory
    /// this crate reads without a copy (only the candle backend's is).
    pub fn with_host<R>(&self, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
        #[cfg(feature = "candle")]
        if let Some(c) = &self.candle {
            return c.with_host(f);
        }
        let _ = f;
        None
    }

    /// The written positions, `[rows, heads, len, head_dim]` (a view: no copy).
    pub fn view(&self) -> Tensor<B, 4> {
        #[cfg(feature = "candle")]
        if let Some(v) = self.candle.as_ref().and_then(|c| c.view::<B>(self.len)) {
            return v;
        }
        match &self.burn {
            Some(t) => t.clone().narrow(2, 0, self.len),
            None => {
                let [rows, heads, hd] = self.dims;
                Tensor::zeros([rows, heads, self.len, hd], &self.device)
            }
        }
    }
}

/// Host values `[rows, t, heads, head_dim]` as a tensor `[rows, heads, t, head_dim]`.
fn heads_first_tensor<B: Backend>(values: &[f32], dims: [usize; 4], device: &B::Device) -> Tensor<B, 4> {
    Tensor::<B, 4>::from_data(burn::tensor::TensorData::new(values.to_vec(), dims), device).swap_dims(1, 2)
}

/// Writes host values `[rows, t, heads, head_dim]` (`dims`) into `dst`, laid out `[rows, heads, cap,
/// head_dim]`, at positions `offset..offset + t`.
#[cfg_attr(not(feature = "candle"), allow(dead_code))]
fn scatter_heads_first(values: &[f32], dims: [usize; 4], dst: &mut [f32], cap: usize, offset: usize) {
    let [rows, t, heads, hd] = dims;
    for b in 0..rows {
        for p in 0..t {
            for h in 0..heads {
                let src = &values[((b * t + p) * heads + h) * hd..][..hd];
                dst[((b * heads + h) * cap + offset + p) * hd..][..hd].copy_from_slice(src);
            }
        }
    }
}

#[cfg(feature = "candle")]
#[allow(deprecated)] // burn-candle: the default CPU backend (docs/architecture.md says why)
mod candle {
    //! The candle path: a candle tensor written with `slice_set`, viewed through burn-candle's public
    //! `CandleTensor::new`. Used when the backend's float primitive is `CandleTensor` in f32 on the CPU
    //! (so not under autodiff, whose primitive differs).

    use std::any::Any;

    use burn::backend::candle::CandleTensor;
    use burn::tensor::{Tensor, TensorPrimitive, backend::Backend};
    use candle_core::{DType, Device};

    #[derive(Debug)]
    pub(super) struct Buffer {
        /// `[rows, heads, capacity, head_dim]`, contiguous.
        tensor: candle_core::Tensor,
    }

    pub(super) fn is_candle_f32<B: Backend>() -> bool {
        use std::any::TypeId;
        TypeId::of::<B::FloatTensorPrimitive>() == TypeId::of::<CandleTensor>()
            && TypeId::of::<B::FloatElem>() == TypeId::of::<f32>()
    }

    /// The host values of `value` as a contiguous candle tensor.
    fn to_candle<B: Backend>(value: &Tensor<B, 4>) -> Option<candle_core::Tensor> {
        let data = value.clone().into_data().convert::<f32>().to_vec::<f32>().ok()?;
        candle_core::Tensor::from_vec(data, value.dims().to_vec(), &Device::Cpu).ok()
    }

    impl Buffer {
        pub(super) fn new<B: Backend>(first: &Tensor<B, 4>, capacity: usize) -> Option<Self> {
            if !is_candle_f32::<B>() {
                return None;
            }
            let [rows, heads, t, hd] = first.dims();
            let src = to_candle(first)?;
            let tensor = if capacity == t {
                src
            } else {
                let buf = candle_core::Tensor::zeros((rows, heads, capacity, hd), DType::F32, &Device::Cpu).ok()?;
                buf.slice_set(&src, 2, 0).ok()?;
                buf
            };
            Some(Self { tensor })
        }

        /// A buffer of `capacity` positions holding host values `[rows, t, heads, head_dim]` (`dims`)
        /// at its first `t`: the values scattered into one zeroed allocation.
        pub(super) fn from_host<B: Backend>(values: &[f32], dims: [usize; 4], capacity: usize) -> Option<Self> {
            if !is_candle_f32::<B>() {
                return None;
            }
            let [rows, _, heads, hd] = dims;
            let mut data = vec![0.0f32; rows * heads * capacity * hd];
            super::scatter_heads_first(values, dims, &mut data, capacity, 0);
            let tensor = candle_core::Tensor::from_vec(data, (rows, heads, capacity, hd), &Device::Cpu).ok()?;
            Some(Self { tensor })
        }

        /// Writes host values `[rows, t, heads, head_dim]` at `offset` (growing the buffer when
        /// needed); false when candle refuses it.
        pub(super) fn append_host(&mut self, offset: usize, values: &[f32], dims: [usize; 4]) -> bool {
            let [rows, t, heads, hd] = dims;
            let mut data = vec![0.0f32; rows * heads * t * hd];
            super::scatter_heads_first(values, dims, &mut data, t, 0);
            let Ok(src) = candle_core::Tensor::from_vec(data, (rows, heads, t, hd), &Device::Cpu) else { return false };
            self.append_src(offset, &src)
        }

        pub(super) fn capacity(&self) -> usize {
            self.tensor.dims()[2]
        }

        /// Writes `value` at `offset` (growing the buffer when needed); false when candle refuses it
        /// (the caller then falls back to burn's ops).
        pub(super) fn append<B: Backend>(&mut self, offset: usize, value: &Tensor<B, 4>) -> bool {
            match to_candle(value) {
                Some(src) => self.append_src(offset, &src),
                None => false,
            }
        }

        /// Writes `src` (`[rows, heads, t, head_dim]`, contiguous) at `offset`, growing when needed.
        fn append_src(&mut self, offset: usize, src: &candle_core::Tensor) -> bool {
            let Ok((rows, heads, t, hd)) = src.dims4() else { return false };
            let end = offset + t;
            if end > self.capacity() {
                let grown = (2 * self.capacity()).max(end);
                let Ok(buf) = candle_core::Tensor::zeros((rows, heads, grown, hd), DType::F32, &Device::Cpu) else {
                    return false;
                };
                let Ok(old) = self.tensor.narrow(2, 0, offset).and_then(|o| o.contiguous()) else { return false };
                if buf.slice_set(&old, 2, 0).is_err() {
                    return false;
                }
                self.tensor = buf;
            }
            self.tensor.slice_set(src, 2, offset).is_ok()
        }

        pub(super) fn with_host<R>(&self, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
            let (storage, layout) = self.tensor.storage_and_layout();
            let candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)) = &*storage else { return None };
            if !layout.is_contiguous() {
                return None;
            }
            let start = layout.start_offset();
            data.get(start..start + layout.shape().elem_count()).map(f)
        }

        pub(super) fn view<B: Backend>(&self, len: usize) -> Option<Tensor<B, 4>> {
            let view = self.tensor.narrow(2, 0, len).ok()?;
            let boxed: Box<dyn Any> = Box::new(CandleTensor::new(view));
            let primitive = boxed.downcast::<B::FloatTensorPrimitive>().ok()?;
            Some(Tensor::from_primitive(TensorPrimitive::Float(*primitive)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Selected, device};
    use burn::tensor::TensorData;

    fn seq(rows: usize, t: usize, start: f32) -> Tensor<Selected, 4> {
        let n = rows * 2 * t * 3;
        let data: Vec<f32> = (0..n).map(|i| start + i as f32).collect();
        Tensor::from_data(TensorData::new(data, [rows, 2, t, 3]), &device())
    }

    fn host(t: Tensor<Selected, 4>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().expect("f32")
    }

    #[test]
    fn appends_equal_a_concatenation_within_and_past_the_capacity() {
        for capacity in [0, 3, 5, 64] {
            let first = seq(2, 3, 0.0);
            let mut buf = KvBuffer::new(first.clone(), capacity);
            let mut expected = first;
            for step in 0..6 {
                let t = 1 + step % 2;
                let new = seq(2, t, 1000.0 * (step + 1) as f32);
                buf.append(new.clone());
                let got = buf.view();
                expected = Tensor::cat(vec![expected, new], 2);
                assert_eq!(got.dims(), expected.dims(), "capacity {capacity}, step {step}");
                assert_eq!(host(got), host(expected.clone()), "capacity {capacity}, step {step}");
            }
            assert_eq!(buf.len(), expected.dims()[2]);
            assert!(buf.capacity() >= buf.len());
        }
    }

    /// Host values `[rows, t, heads, head_dim]` written with `from_host` / `append_host` (within and
    /// past the capacity) read back as the same values written through tensors.
    #[test]
    fn host_writes_equal_tensor_writes() {
        let dev = device();
        let (rows, heads, hd) = (2, 3, 4);
        let host_values =
            |t: usize, start: f32| -> Vec<f32> { (0..rows * t * heads * hd).map(|i| start + i as f32).collect() };
        let as_tensor = |v: &[f32], t: usize| {
            Tensor::<Selected, 4>::from_data(TensorData::new(v.to_vec(), [rows, t, heads, hd]), &dev).swap_dims(1, 2)
        };
        for capacity in [0, 3, 8] {
            let first = host_values(3, 0.0);
            let mut by_host = KvBuffer::<Selected>::from_host(&first, [rows, 3, heads, hd], capacity, &dev);
            let mut by_tensor = KvBuffer::new(as_tensor(&first, 3), capacity);
            for step in 0..5 {
                let t = 1 + step % 3;
                let new = host_values(t, 1000.0 * (step + 1) as f32);
                by_host.append_host(&new, t);
                by_tensor.append(as_tensor(&new, t));
                assert_eq!(by_host.len(), by_tensor.len());
                assert_eq!(host(by_host.view()), host(by_tensor.view()), "capacity {capacity}, step {step}");
            }
        }
    }

    #[test]
    fn earlier_views_keep_their_values_after_later_appends() {
        let mut buf = KvBuffer::new(seq(1, 2, 0.0), 16);
        buf.append(seq(1, 1, 100.0));
        let early = buf.view();
        let before = host(early.clone());
        for step in 0..20 {
            buf.append(seq(1, 1, 500.0 + step as f32));
        }
        assert_eq!(host(early), before);
    }

    #[test]
    fn host_values_are_the_written_positions() {
        let mut buf = KvBuffer::new(seq(2, 3, 0.0), 4);
        buf.append(seq(2, 2, 50.0)); // past the capacity: the buffer grew
        let want = host(buf.view());
        let [rows, heads, hd] = buf.dims();
        let (len, cap) = (buf.len(), buf.capacity());
        let got = buf.with_host(|data| {
            assert_eq!(data.len(), rows * heads * cap * hd);
            let mut written = Vec::new();
            for rh in 0..rows * heads {
                written.extend_from_slice(&data[rh * cap * hd..][..len * hd]);
            }
            written
        });
        let candle_only = cfg!(all(feature = "candle", not(any(feature = "flex", feature = "wgpu", feature = "cuda"))));
        match got {
            Some(got) => assert_eq!(got, want),
            None => assert!(!candle_only, "the candle backend's buffer is host memory"),
        }
    }
}
