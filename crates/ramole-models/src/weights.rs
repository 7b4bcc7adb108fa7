//! Named weights on the host, whatever file they come from.
//!
//! Model loaders ask a [`WeightSource`] for tensors by their Hugging Face name in PyTorch layout
//! (`Linear` weights `[out, in]`); the source converts to f32 (dequantising GGUF blocks, widening
//! f16/bf16). [`WeightSource::load`] checks presence, shape and finiteness, so a loader gets either
//! a usable tensor or an error naming the file and the tensor.

use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, TensorData, backend::Backend};
use safetensors::tensor::Metadata;
use safetensors::{Dtype, SafeTensors};

use crate::ModelError;

/// An f32 tensor on the host, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// The dimensions.
    pub shape: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// A tensor from its shape and values; `None` if they do not agree.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Option<Self> {
        (shape.iter().product::<usize>() == data.len()).then_some(Self { shape, data })
    }

    /// Moves the tensor to a device. `D` must be the tensor's rank (loaders check shapes first).
    pub fn into_tensor<B: Backend, const D: usize>(self, device: &B::Device) -> Tensor<B, D> {
        Tensor::from_data(TensorData::new(self.data, self.shape), device)
    }

    /// The transpose of a 2-D tensor (`[out, in]` → `[in, out]`, the layout of burn's `Linear`).
    pub fn transposed(&self) -> Self {
        let (rows, cols) = (self.shape[0], self.shape.get(1).copied().unwrap_or(1));
        let mut data = vec![0f32; self.data.len()];
        for r in 0..rows {
            for c in 0..cols {
                data[c * rows + r] = self.data[r * cols + c];
            }
        }
        Self { shape: vec![cols, rows], data }
    }
}

/// A source of named weights, converted to f32.
pub trait WeightSource {
    /// The file the weights come from, for error messages.
    fn path(&self) -> &Path;

    /// The tensor `name`, or `None` if the source has no such tensor.
    fn get(&self, name: &str) -> Result<Option<HostTensor>, ModelError>;

    /// The names of all tensors.
    fn names(&self) -> Vec<String>;

    /// The tensor `name`, which must exist, have `shape` and hold only finite values.
    fn load(&self, name: &str, shape: &[usize]) -> Result<HostTensor, ModelError> {
        let t = self
            .get(name)?
            .ok_or_else(|| ModelError::MissingTensor { path: self.path().into(), tensor: name.into() })?;
        if t.shape != shape {
            return Err(ModelError::TensorShape {
                path: self.path().into(),
                tensor: name.into(),
                expected: shape.to_vec(),
                got: t.shape,
            });
        }
        if t.data.iter().any(|v| !v.is_finite()) {
            return Err(ModelError::NonFinite { path: self.path().into(), tensor: name.into() });
        }
        Ok(t)
    }
}

/// Weights in a `.safetensors` file (f32, f16 or bf16), read whole into memory; the header is parsed
/// and validated once, at open.
#[derive(Debug)]
pub struct SafetensorsWeights {
    path: PathBuf,
    bytes: Vec<u8>,
    /// Where the tensor data starts in `bytes` (after the length prefix and the header).
    data_start: usize,
    metadata: Metadata,
}

impl SafetensorsWeights {
    /// Reads and validates the file (header, offsets, sizes).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref().to_path_buf();
        let bytes = std::fs::read(&path).map_err(|e| ModelError::io(&path, e))?;
        Self::from_bytes(path, bytes)
    }

    /// Validates `bytes` as a safetensors file; `path` names it in errors.
    pub fn from_bytes(path: PathBuf, bytes: Vec<u8>) -> Result<Self, ModelError> {
        let (header_len, metadata) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| ModelError::format(&path, format!("not a valid safetensors file: {e}")))?;
        Ok(Self { path, bytes, data_start: 8 + header_len, metadata })
    }
}

impl WeightSource for SafetensorsWeights {
    fn path(&self) -> &Path {
        &self.path
    }

    fn get(&self, name: &str) -> Result<Option<HostTensor>, ModelError> {
        let Some(info) = self.metadata.info(name) else { return Ok(None) };
        let (start, end) = info.data_offsets; // validated against the file size at open
        let raw = &self.bytes[self.data_start + start..self.data_start + end];
        let data: Vec<f32> = match info.dtype {
            Dtype::F32 => raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => raw.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => raw.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            other => {
                return Err(ModelError::UnsupportedDtype {
                    path: self.path.clone(),
                    tensor: name.into(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        HostTensor::new(info.shape.clone(), data).map(Some).ok_or_else(|| {
            ModelError::format(&self.path, format!("tensor `{name}`: data size does not match its shape"))
        })
    }

    fn names(&self) -> Vec<String> {
        self.metadata.offset_keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(tensors: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)>) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.safetensors");
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .map(|(n, d, s, b)| (n.to_string(), safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("view")))
            .collect();
        safetensors::serialize_to_file(views, None, &path).expect("write");
        (dir, path)
    }

    #[test]
    fn reads_f32_f16_bf16() {
        let f32s: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let f16s: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
        let bf16s: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect();
        let (_d, path) = write(vec![
            ("a", Dtype::F32, vec![2], f32s),
            ("b", Dtype::F16, vec![1, 2], f16s),
            ("c", Dtype::BF16, vec![2, 1], bf16s),
        ]);
        let w = SafetensorsWeights::open(&path).expect("open");
        for (name, shape) in [("a", vec![2]), ("b", vec![1, 2]), ("c", vec![2, 1])] {
            let t = w.load(name, &shape).expect("load");
            assert_eq!(t.data, vec![1.5, -2.0]);
        }
        assert!(w.get("missing").expect("get").is_none());
    }

    #[test]
    fn typed_errors_for_bad_files_and_tensors() {
        let nan: Vec<u8> = [f32::NAN, 1.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let ints: Vec<u8> = [1i32, 2].iter().flat_map(|v| v.to_le_bytes()).collect();
        let (_d, path) = write(vec![("n", Dtype::F32, vec![2], nan), ("i", Dtype::I32, vec![2], ints)]);
        let w = SafetensorsWeights::open(&path).expect("open");
        assert!(matches!(w.load("n", &[2]), Err(ModelError::NonFinite { tensor, .. }) if tensor == "n"));
        assert!(matches!(w.load("n", &[3]), Err(ModelError::TensorShape { tensor, .. }) if tensor == "n"));
        assert!(matches!(w.load("i", &[2]), Err(ModelError::UnsupportedDtype { tensor, .. }) if tensor == "i"));
        assert!(matches!(w.load("x", &[2]), Err(ModelError::MissingTensor { tensor, .. }) if tensor == "x"));

        let bytes = std::fs::read(&path).expect("read");
        let truncated = path.with_file_name("t.safetensors");
        std::fs::write(&truncated, &bytes[..bytes.len() - 3]).expect("write");
        let err = SafetensorsWeights::open(&truncated).expect_err("truncated file must be refused");
        assert!(matches!(err, ModelError::Format { path, .. } if path == truncated));
    }
}
