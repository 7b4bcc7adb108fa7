//! Named weights on the host, whatever file they come from.
//!
//! Model loaders ask a [`WeightSource`] for tensors by their Hugging Face name in PyTorch layout
//! (`Linear` weights `[out, in]`); the source converts to f32 (dequantising GGUF blocks, widening
//! f16/bf16). [`WeightSource::load`] checks presence, shape and finiteness, so a loader gets either
//! a usable tensor or an error naming the file and the tensor.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, TensorData, backend::Backend};
use ramole_core::quant::QMatrix;
use safetensors::Dtype;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::ModelError;

/// The largest safetensors header accepted (the format's own limit, as in the `safetensors` crate).
pub const MAX_SAFETENSORS_HEADER_BYTES: u64 = 100_000_000;
/// The most dimensions a safetensors tensor may declare.
const MAX_SAFETENSORS_RANK: usize = 8;

/// An f32 tensor on the host, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// The dimensions.
    pub shape: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<f32>,
}

/// The bytes of a safetensors file holding `tensors` as f32 under their names (with the `format: pt`
/// metadata PyTorch writers add). `path` names the file in errors.
pub fn serialize_f32(tensors: &[(String, HostTensor)], path: &Path) -> Result<Vec<u8>, ModelError> {
    let bytes: Vec<Vec<u8>> =
        tensors.iter().map(|(_, t)| t.data.iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, t), b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, t.shape.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| ModelError::format(path, format!("tensor `{n}`: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(metadata))
        .map_err(|e| ModelError::format(path, format!("cannot serialise: {e}")))
}

impl HostTensor {
    /// A tensor from its shape and values; `None` if they do not agree.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Option<Self> {
        let numel = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        (numel == Some(data.len())).then_some(Self { shape, data })
    }

    /// Moves the tensor to a device. `D` must be the tensor's rank (loaders check shapes first).
    pub fn into_tensor<B: Backend, const D: usize>(self, device: &B::Device) -> Tensor<B, D> {
        Tensor::from_data(TensorData::new(self.data, self.shape), device)
    }

    /// The transpose of a 2-D tensor (`[out, in]` → `[in, out]`, the layout of burn's `Linear`).
    ///
    /// The loops run over the values held, not the declared dimensions, so a tensor with a zero
    /// dimension (and a huge other one) costs nothing.
    pub fn transposed(&self) -> Self {
        let rows = self.shape.first().copied().unwrap_or(1);
        let cols = self.shape.get(1).copied().unwrap_or(1);
        let mut data = vec![0f32; self.data.len()];
        if cols > 0 {
            for (r, row) in self.data.chunks_exact(cols).enumerate() {
                for (c, &v) in row.iter().enumerate() {
                    if let Some(slot) = c.checked_mul(rows).and_then(|i| i.checked_add(r)).and_then(|i| data.get_mut(i))
                    {
                        *slot = v;
                    }
                }
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

    /// The 2-D tensor `name` kept in its block format, when the source stores it in one that
    /// [`QMatrix`] multiplies (GGUF's Q4_0, Q4_1, Q8_0), in PyTorch layout `[out, in]`; `None` when the
    /// source stores it otherwise or has no such tensor (then [`WeightSource::get`] has it in f32).
    fn get_quantized(&self, name: &str) -> Result<Option<QMatrix>, ModelError> {
        let _ = name;
        Ok(None)
    }

    /// [`WeightSource::get_quantized`], checked to have `shape`; `None` as there.
    fn load_quantized(&self, name: &str, shape: [usize; 2]) -> Result<Option<QMatrix>, ModelError> {
        let Some(q) = self.get_quantized(name)? else { return Ok(None) };
        if [q.rows(), q.cols()] != shape {
            return Err(ModelError::TensorShape {
                path: self.path().into(),
                tensor: name.into(),
                expected: shape.to_vec(),
                got: vec![q.rows(), q.cols()],
            });
        }
        Ok(Some(q))
    }

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
///
/// What is checked before the tensor data is read: the file is a regular file (a FIFO or a device is
/// refused without opening it), the 8-byte header length is at most [`MAX_SAFETENSORS_HEADER_BYTES`]
/// and fits the file, the header is a JSON object of tensor descriptions (at most 8 dimensions each,
/// no name twice), every tensor's element count times its dtype's size is its byte range (overflow
/// checked), and the ranges tile the data section exactly, which must be the rest of the file.
#[derive(Debug)]
pub struct SafetensorsWeights {
    path: PathBuf,
    bytes: Vec<u8>,
    /// Where the tensor data starts in `bytes` (after the length prefix and the header).
    data_start: usize,
    tensors: BTreeMap<String, SafetensorsEntry>,
    /// Tensor names in the order of their data.
    order: Vec<String>,
}

/// A validated tensor description: its byte range is relative to the data section.
#[derive(Debug, Clone)]
struct SafetensorsEntry {
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// A tensor description as written in the header.
#[derive(Deserialize)]
struct RawEntry {
    dtype: Dtype,
    shape: BoundedShape,
    data_offsets: (u64, u64),
}

/// A shape of at most [`MAX_SAFETENSORS_RANK`] dimensions, refused while it is parsed if longer.
struct BoundedShape(Vec<u64>);

impl<'de> Deserialize<'de> for BoundedShape {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BoundedShape;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "an array of at most {MAX_SAFETENSORS_RANK} dimensions")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<BoundedShape, A::Error> {
                let mut dims = Vec::new();
                while let Some(d) = seq.next_element::<u64>()? {
                    if dims.len() == MAX_SAFETENSORS_RANK {
                        return Err(de::Error::custom(format!("more than {MAX_SAFETENSORS_RANK} dimensions")));
                    }
                    dims.push(d);
                }
                Ok(BoundedShape(dims))
            }
        }
        d.deserialize_seq(V)
    }
}

/// The header: tensor descriptions in file order (`__metadata__`, a string-to-string map, is skipped).
struct RawHeader(Vec<(String, RawEntry)>);

impl<'de> Deserialize<'de> for RawHeader {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawHeader;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object of tensor descriptions")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawHeader, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if key == "__metadata__" {
                        map.next_value::<BTreeMap<String, String>>()?;
                    } else {
                        let entry = map
                            .next_value::<RawEntry>()
                            .map_err(|e| de::Error::custom(format!("tensor `{key}`: {e}")))?;
                        entries.push((key, entry));
                    }
                }
                Ok(RawHeader(entries))
            }
        }
        d.deserialize_map(V)
    }
}

/// Checks the 8-byte header length `n` of a safetensors file of `file_len` bytes.
fn check_header_len(path: &Path, n: u64, file_len: u64) -> Result<usize, ModelError> {
    if n > MAX_SAFETENSORS_HEADER_BYTES {
        return Err(ModelError::format(
            path,
            format!(
                "not a valid safetensors file: header length {n} is over the {MAX_SAFETENSORS_HEADER_BYTES}-byte limit"
            ),
        ));
    }
    if n.checked_add(8).is_none_or(|end| end > file_len) {
        return Err(ModelError::format(
            path,
            format!("not a valid safetensors file: header length {n} runs past the end of the file ({file_len} bytes)"),
        ));
    }
    usize::try_from(n).map_err(|_| ModelError::format(path, format!("header length {n} does not fit in memory")))
}

/// Parses and validates a safetensors header against the size of the data section that follows it.
/// Returns the tensors by name and their names in data order.
fn parse_header(
    path: &Path,
    header: &[u8],
    data_len: u64,
) -> Result<(BTreeMap<String, SafetensorsEntry>, Vec<String>), ModelError> {
    let bad = |m: String| ModelError::format(path, format!("not a valid safetensors file: {m}"));
    let RawHeader(raw) = serde_json::from_slice(header).map_err(|e| bad(format!("header: {e}")))?;
    let mut entries = Vec::with_capacity(raw.len());
    for (name, e) in raw {
        let terr = |m: String| bad(format!("tensor `{name}`: {m}"));
        let dims = &e.shape.0;
        let numel = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let bits = u64::try_from(e.dtype.bitsize()).ok();
        let size =
            numel.zip(bits).and_then(|(n, b)| n.checked_mul(b)).filter(|b| b % 8 == 0).map(|b| b / 8).ok_or_else(
                || terr(format!("shape {dims:?} of {:?} overflows or is not a whole number of bytes", e.dtype)),
            )?;
        let (start, end) = e.data_offsets;
        if end < start || end - start != size {
            return Err(terr(format!(
                "data_offsets [{start}, {end}] hold {} bytes, its shape {dims:?} of {:?} needs {size}",
                end.saturating_sub(start),
                e.dtype
            )));
        }
        let shape = dims
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| terr(format!("shape {dims:?} does not fit in memory")))?;
        entries.push((name, e.dtype, shape, start, end));
    }
    // The byte ranges must tile the data section: sorted by offset, each starts where the previous
    // ends, the last ends at the end of the file.
    entries.sort_by_key(|&(_, _, _, start, end)| (start, end));
    let mut tensors = BTreeMap::new();
    let mut order = Vec::with_capacity(entries.len());
    let mut at = 0u64;
    for (name, dtype, shape, start, end) in entries {
        if start != at {
            return Err(bad(format!(
                "tensor `{name}`: data starts at {start}, expected {at} (overlapping or gapped tensors)"
            )));
        }
        at = end;
        let (Ok(start), Ok(end)) = (usize::try_from(start), usize::try_from(end)) else {
            return Err(bad(format!("tensor `{name}`: data offsets do not fit in memory")));
        };
        if tensors.insert(name.clone(), SafetensorsEntry { dtype, shape, start, end }).is_some() {
            return Err(bad(format!("tensor `{name}` appears twice")));
        }
        order.push(name);
    }
    if at != data_len {
        return Err(bad(format!(
            "the tensors hold {at} bytes of data but the file has {data_len} after the header (truncated or padded)"
        )));
    }
    Ok((tensors, order))
}

impl SafetensorsWeights {
    /// Reads and validates the file: its type and size, the header length and the header are checked
    /// before the tensor data is read.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref().to_path_buf();
        let io = |e| ModelError::io(&path, e);
        let (file, len) = ramole_core::fs::open_regular(&path).map_err(io)?;
        if len < 8 {
            return Err(ModelError::format(
                &path,
                format!("not a valid safetensors file: {len} bytes, shorter than the 8-byte header length"),
            ));
        }
        let size =
            usize::try_from(len).map_err(|_| ModelError::format(&path, format!("{len} bytes do not fit in memory")))?;
        // `take` guards against a file that grows while it is read.
        let mut reader = file.take(len);
        let mut prefix = [0u8; 8];
        reader.read_exact(&mut prefix).map_err(io)?;
        let n = check_header_len(&path, u64::from_le_bytes(prefix), len)?;
        let mut header = vec![0u8; n];
        reader.read_exact(&mut header).map_err(io)?;
        let data_len = len - 8 - n as u64; // n + 8 <= len was checked
        let (tensors, order) = parse_header(&path, &header, data_len)?;

        let mut bytes = Vec::new();
        bytes
            .try_reserve_exact(size)
            .map_err(|_| ModelError::format(&path, format!("cannot hold its {len} bytes in memory")))?;
        bytes.extend_from_slice(&prefix);
        bytes.extend_from_slice(&header);
        drop(header);
        reader.read_to_end(&mut bytes).map_err(io)?;
        if bytes.len() != size {
            return Err(ModelError::format(
                &path,
                format!("shrank from {len} to {} bytes while it was read (truncated)", bytes.len()),
            ));
        }
        Ok(Self { path, bytes, data_start: 8 + n, tensors, order })
    }

    /// Validates `bytes` as a safetensors file; `path` names it in errors.
    pub fn from_bytes(path: PathBuf, bytes: Vec<u8>) -> Result<Self, ModelError> {
        let len = bytes.len() as u64;
        let Some(prefix) = bytes.first_chunk::<8>() else {
            return Err(ModelError::format(
                &path,
                format!("not a valid safetensors file: {len} bytes, shorter than the 8-byte header length"),
            ));
        };
        let n = check_header_len(&path, u64::from_le_bytes(*prefix), len)?;
        let header = bytes.get(8..8 + n).unwrap_or_default();
        let (tensors, order) = parse_header(&path, header, len - 8 - n as u64)?;
        Ok(Self { path, bytes, data_start: 8 + n, tensors, order })
    }

    /// The shape of the tensor `name`, without reading its data; `None` if there is no such tensor.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|e| e.shape.as_slice())
    }
}

impl WeightSource for SafetensorsWeights {
    fn path(&self) -> &Path {
        &self.path
    }

    fn get(&self, name: &str) -> Result<Option<HostTensor>, ModelError> {
        let Some(info) = self.tensors.get(name) else { return Ok(None) };
        // Validated against the file size at open; checked again rather than trusted.
        let raw = self
            .data_start
            .checked_add(info.start)
            .zip(self.data_start.checked_add(info.end))
            .and_then(|(s, e)| self.bytes.get(s..e))
            .ok_or_else(|| ModelError::format(&self.path, format!("tensor `{name}`: data lies outside the file")))?;
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
        self.order.clone()
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
