//! GGUF reader (versions 2 and 3, little-endian) and [`GgufWeights`], a [`WeightSource`] that serves a
//! llama.cpp model under Hugging Face names.
//!
//! [`GgufFile::open`] parses the header, every metadata value and every tensor description, and checks
//! each tensor's data range against the file size. Every count and length read from the file is bounded
//! by the bytes left and by a cap ([`MAX_TENSORS`], [`MAX_METADATA_PAIRS`], [`MAX_STRING_BYTES`],
//! [`MAX_ARRAY_ELEMENTS`]), so a corrupt or truncated file is a [`ModelError::Format`] naming the file
//! (and the tensor), never a panic or a huge allocation. Only regular files are opened (a FIFO or a
//! device is refused before it is opened). Tensor data is read on demand. [`GgufFile::from_bytes`]
//! parses a header held in memory (the fuzz tests use it).
//!
//! ggml lists dimensions innermost first (`[ne0 = in, ne1 = out]`); [`GgufTensorInfo::shape`] is in
//! PyTorch order (`[out, in]`).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use ramole_core::CoreError;
use ramole_core::quant::{QMatrix, QuantFormat};

use crate::ModelError;
use crate::llama::LlamaConfig;
use crate::weights::{HostTensor, WeightSource};

/// The GGUF magic, `GGUF` in ASCII.
const MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's maximum number of dimensions.
const MAX_DIMS: u32 = 4;
/// Deepest nesting of arrays accepted in metadata.
const MAX_ARRAY_DEPTH: usize = 4;
/// The most tensors a file may declare (real models have a few thousand).
pub const MAX_TENSORS: u64 = 1 << 20;
/// The most metadata key/value pairs a file may declare.
pub const MAX_METADATA_PAIRS: u64 = 1 << 20;
/// The longest string (key, value or tensor name) accepted.
pub const MAX_STRING_BYTES: u64 = 16 << 20;
/// The most array elements, all metadata arrays together (nested ones included). A token list has
/// up to a few hundred thousand; each element takes 32 bytes in memory however small it is in the file.
pub const MAX_ARRAY_ELEMENTS: u64 = 1 << 24;

/// A ggml tensor data type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// Blocks of 32: f16 scale, 16 bytes of 4-bit values; `v = d·(q − 8)`.
    Q4_0,
    /// Blocks of 32: f16 scale, f16 min, 16 bytes of 4-bit values; `v = d·q + m`.
    Q4_1,
    /// Blocks of 32 with 5-bit values (not dequantised here).
    Q5_0,
    /// Blocks of 32 with 5-bit values and a min (not dequantised here).
    Q5_1,
    /// Blocks of 32: f16 scale, 32 int8; `v = d·q`.
    Q8_0,
    /// Blocks of 32 with int8 values and a sum (not dequantised here).
    Q8_1,
    /// k-quant, 2 bits (not dequantised here).
    Q2K,
    /// k-quant, 3 bits (not dequantised here).
    Q3K,
    /// k-quant, 4 bits (not dequantised here).
    Q4K,
    /// k-quant, 5 bits (not dequantised here).
    Q5K,
    /// k-quant, 6 bits (not dequantised here).
    Q6K,
    /// k-quant, 8 bits (not dequantised here).
    Q8K,
    /// 8-bit integer.
    I8,
    /// 16-bit integer.
    I16,
    /// 32-bit integer.
    I32,
    /// 64-bit integer.
    I64,
    /// 64-bit float.
    F64,
    /// bfloat16.
    BF16,
    /// A type id this reader does not know (its data size cannot be checked).
    Other(u32),
}

impl GgmlType {
    /// The type with ggml id `id`.
    pub fn from_id(id: u32) -> Self {
        match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            9 => Self::Q8_1,
            10 => Self::Q2K,
            11 => Self::Q3K,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            15 => Self::Q8K,
            24 => Self::I8,
            25 => Self::I16,
            26 => Self::I32,
            27 => Self::I64,
            28 => Self::F64,
            30 => Self::BF16,
            other => Self::Other(other),
        }
    }

    /// The ggml id.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q8_1 => 9,
            Self::Q2K => 10,
            Self::Q3K => 11,
            Self::Q4K => 12,
            Self::Q5K => 13,
            Self::Q6K => 14,
            Self::Q8K => 15,
            Self::I8 => 24,
            Self::I16 => 25,
            Self::I32 => 26,
            Self::I64 => 27,
            Self::F64 => 28,
            Self::BF16 => 30,
            Self::Other(id) => id,
        }
    }

    /// `(values per block, bytes per block)`, or `None` for an unknown type.
    pub fn block(self) -> Option<(u64, u64)> {
        Some(match self {
            Self::F32 | Self::I32 => (1, 4),
            Self::F16 | Self::BF16 | Self::I16 => (1, 2),
            Self::I8 => (1, 1),
            Self::I64 | Self::F64 => (1, 8),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
            Self::Q8_1 => (32, 36),
            Self::Q2K => (256, 84),
            Self::Q3K => (256, 110),
            Self::Q4K => (256, 144),
            Self::Q5K => (256, 176),
            Self::Q6K => (256, 210),
            Self::Q8K => (256, 292),
            Self::Other(_) => return None,
        })
    }

    /// Bytes taken by `n` values, or `None` if the type is unknown, `n` is not a whole number of
    /// blocks, or the size overflows.
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let (values, bytes) = self.block()?;
        n.is_multiple_of(values).then(|| (n / values).checked_mul(bytes)).flatten()
    }
}

/// Dequantises (or widens) `raw`, the data of `n` values of type `dtype`, to f32.
///
/// Supports F32, F16, BF16, Q8_0, Q4_0 and Q4_1; `None` for other types or when `raw` is not exactly
/// the size of `n` values.
pub fn dequantize(dtype: GgmlType, raw: &[u8], n: usize) -> Option<Vec<f32>> {
    if dtype.bytes_for(n as u64) != Some(raw.len() as u64) {
        return None;
    }
    let half = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
    let mut out = Vec::with_capacity(n);
    match dtype {
        GgmlType::F32 => out.extend(raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        GgmlType::F16 => out.extend(raw.chunks_exact(2).map(half)),
        GgmlType::BF16 => out.extend(raw.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())),
        GgmlType::Q8_0 => {
            for block in raw.chunks_exact(34) {
                let d = half(&block[..2]);
                out.extend(block[2..].iter().map(|&q| d * f32::from(q as i8)));
            }
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let (stride, offset) = if dtype == GgmlType::Q4_0 { (18, -8.0) } else { (20, 0.0) };
            for block in raw.chunks_exact(stride) {
                let d = half(&block[..2]);
                let m = if dtype == GgmlType::Q4_1 { half(&block[2..4]) } else { 0.0 };
                let qs = &block[stride - 16..];
                // Low nibbles are values 0..16 of the block, high nibbles values 16..32.
                out.extend(qs.iter().map(|&q| d * (f32::from(q & 0x0f) + offset) + m));
                out.extend(qs.iter().map(|&q| d * (f32::from(q >> 4) + offset) + m));
            }
        }
        _ => return None,
    }
    Some(out)
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// `uint8`.
    U8(u8),
    /// `int8`.
    I8(i8),
    /// `uint16`.
    U16(u16),
    /// `int16`.
    I16(i16),
    /// `uint32`.
    U32(u32),
    /// `int32`.
    I32(i32),
    /// `float32`.
    F32(f32),
    /// `bool`.
    Bool(bool),
    /// A UTF-8 string.
    String(String),
    /// An array of values of one type.
    Array(Vec<GgufValue>),
    /// `uint64`.
    U64(u64),
    /// `int64`.
    I64(i64),
    /// `float64`.
    F64(f64),
}

impl GgufValue {
    /// The value as an integer, if it is one of the integer types.
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            Self::U8(v) => v.into(),
            Self::I8(v) => v.into(),
            Self::U16(v) => v.into(),
            Self::I16(v) => v.into(),
            Self::U32(v) => v.into(),
            Self::I32(v) => v.into(),
            Self::U64(v) => v.into(),
            Self::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// The value as a float, if it is a float or an integer. An f32 is widened through its shortest
    /// decimal form, so `1e-5f32` gives `1e-5f64`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => v.to_string().parse().ok(),
            Self::F64(v) => Some(v),
            _ => self.as_i128().map(|v| v as f64),
        }
    }

    /// The value as a string slice, if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The elements, if the value is an array.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }

    /// A short description for messages: the value, or for an array its type and length (a corrupt
    /// file's value may be huge).
    pub fn preview(&self) -> String {
        match self {
            Self::Array(a) => format!("an array of {} values", a.len()),
            Self::String(s) if s.chars().count() > 60 => {
                format!("String({:?}…, {} bytes)", s.chars().take(60).collect::<String>(), s.len())
            }
            other => format!("{other:?}"),
        }
    }

    /// The GGUF name of the value's type.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::U8(_) => "uint8",
            Self::I8(_) => "int8",
            Self::U16(_) => "uint16",
            Self::I16(_) => "int16",
            Self::U32(_) => "uint32",
            Self::I32(_) => "int32",
            Self::F32(_) => "float32",
            Self::Bool(_) => "bool",
            Self::String(_) => "string",
            Self::Array(_) => "array",
            Self::U64(_) => "uint64",
            Self::I64(_) => "int64",
            Self::F64(_) => "float64",
        }
    }
}

/// The description of one tensor in a GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    /// The GGUF name (`blk.0.attn_q.weight`).
    pub name: String,
    /// The dimensions in PyTorch order (ggml's reversed): `[out, in]` for a matrix.
    pub shape: Vec<usize>,
    /// The data type.
    pub dtype: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    /// Size of the data in bytes; `None` for a type of unknown size.
    pub size: Option<u64>,
}

impl GgufTensorInfo {
    /// Number of values (`usize::MAX` if the product overflows, which a parsed file never has).
    pub fn numel(&self) -> usize {
        self.shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).unwrap_or(usize::MAX)
    }
}

/// A parsed GGUF file: metadata and tensor descriptions (tensor data is read on demand).
#[derive(Debug, Clone)]
pub struct GgufFile {
    path: PathBuf,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
    /// Index of each tensor in `tensors`, by name.
    index: HashMap<String, usize>,
}

/// Bounds-checked little-endian reading of the header.
struct HeaderReader<'a, R> {
    inner: R,
    pos: u64,
    len: u64,
    path: &'a Path,
    /// Array elements read so far (against [`MAX_ARRAY_ELEMENTS`]).
    array_elements: u64,
}

impl<R: Read> HeaderReader<'_, R> {
    fn err(&self, message: impl Into<String>) -> ModelError {
        ModelError::format(self.path, message)
    }

    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>, ModelError> {
        if n > self.remaining() {
            return Err(self.err(format!(
                "truncated: {what} needs {n} bytes at offset {}, the file has {} left",
                self.pos,
                self.remaining()
            )));
        }
        let len = usize::try_from(n).map_err(|_| self.err(format!("{what}: {n} bytes do not fit in memory")))?;
        let mut buf = vec![0u8; len];
        self.inner.read_exact(&mut buf).map_err(|e| {
            ModelError::format(self.path, format!("{what}: cannot read {n} bytes at offset {}: {e}", self.pos))
        })?;
        self.pos += n;
        Ok(buf)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], ModelError> {
        let b = self.bytes(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&b);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, ModelError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, ModelError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A count of at most `max` items each at least `min_size` bytes long, checked against the bytes left.
    fn count(&mut self, min_size: u64, max: u64, what: &str) -> Result<u64, ModelError> {
        let n = self.u64(what)?;
        if n > max {
            return Err(self.err(format!("{what} is {n}, over the limit of {max} (at offset {})", self.pos)));
        }
        if n.checked_mul(min_size).is_none_or(|b| b > self.remaining()) {
            return Err(self.err(format!(
                "{what} is {n}, more than the {} bytes left at offset {} can hold",
                self.remaining(),
                self.pos
            )));
        }
        Ok(n)
    }

    fn string(&mut self, what: &str) -> Result<String, ModelError> {
        let n = self.count(1, MAX_STRING_BYTES, &format!("length of {what}"))?;
        let b = self.bytes(n, what)?;
        String::from_utf8(b).map_err(|_| self.err(format!("{what} is not valid UTF-8")))
    }

    /// The smallest encoding of a value of GGUF type `ty`, or `None` for an unknown type.
    fn min_size(ty: u32) -> Option<u64> {
        Some(match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10..=12 => 8,
            9 => 12,
            _ => return None,
        })
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<GgufValue, ModelError> {
        Ok(match ty {
            0 => GgufValue::U8(self.array::<1>(key)?[0]),
            1 => GgufValue::I8(i8::from_le_bytes(self.array(key)?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(key)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(key)?)),
            4 => GgufValue::U32(self.u32(key)?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(key)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(self.err(format!("metadata `{key}`: invalid bool byte {b}"))),
            },
            8 => GgufValue::String(self.string(&format!("metadata `{key}`"))?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err(format!("metadata `{key}`: arrays nested deeper than {MAX_ARRAY_DEPTH}")));
                }
                let elem = self.u32(key)?;
                let min = Self::min_size(elem)
                    .ok_or_else(|| self.err(format!("metadata `{key}`: unknown array element type {elem}")))?;
                let n = self.count(min, MAX_ARRAY_ELEMENTS, &format!("element count of metadata `{key}`"))?;
                self.array_elements = self.array_elements.saturating_add(n);
                if self.array_elements > MAX_ARRAY_ELEMENTS {
                    return Err(self.err(format!(
                        "metadata `{key}`: the arrays hold more than {MAX_ARRAY_ELEMENTS} elements in all"
                    )));
                }
                let values = (0..n).map(|_| self.value(elem, key, depth + 1)).collect::<Result<Vec<_>, _>>()?;
                GgufValue::Array(values)
            }
            10 => GgufValue::U64(self.u64(key)?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(key)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(key)?)),
            other => return Err(self.err(format!("metadata `{key}`: unknown value type {other}"))),
        })
    }
}

impl GgufFile {
    /// Parses the header, metadata and tensor descriptions of the GGUF file at `path`, which must be a
    /// regular file (checked before it is opened).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref();
        let (file, len) = ramole_core::fs::open_regular(path).map_err(|e| ModelError::io(path, e))?;
        Self::parse(path, BufReader::with_capacity(1 << 16, file), len)
    }

    /// Parses a GGUF file held in memory (header, metadata, tensor descriptions, data ranges checked
    /// against `bytes.len()`); `path` names it in errors. Tensor data is still read from `path` by
    /// [`Self::read_raw`]; slice `bytes` with [`GgufTensorInfo::offset`] and [`GgufTensorInfo::size`]
    /// to read it from memory.
    pub fn from_bytes(path: impl AsRef<Path>, bytes: &[u8]) -> Result<Self, ModelError> {
        Self::parse(path.as_ref(), bytes, bytes.len() as u64)
    }

    /// Parses the header from `inner`, a reader at the start of a file of `len` bytes.
    fn parse<R: Read>(path: &Path, inner: R, len: u64) -> Result<Self, ModelError> {
        let mut r = HeaderReader { inner, pos: 0, len, path, array_elements: 0 };

        let magic: [u8; 4] = r.array("magic")?;
        if magic != MAGIC {
            return Err(r.err(format!("not a GGUF file (magic {magic:02x?})")));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            let hint = if version.swap_bytes() <= 3 { " (a big-endian file?)" } else { "" };
            return Err(r.err(format!("unsupported GGUF version {version}{hint}; only 2 and 3 are read")));
        }
        // A tensor description takes at least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset) bytes;
        // a metadata pair at least 8 (key length) + 4 (type) + 1 (value).
        let n_tensors = r.count(24, MAX_TENSORS, "tensor count")?;
        let n_kv = r.count(13, MAX_METADATA_PAIRS, "metadata count")?;

        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = r.string(&format!("metadata key {i}"))?;
            let ty = r.u32(&key)?;
            let value = r.value(ty, &key, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(r.err(format!("metadata key `{key}` appears twice")));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_i128().and_then(|a| u32::try_from(a).ok()) {
                Some(a) if a.is_power_of_two() => u64::from(a),
                _ => return Err(r.err(format!("general.alignment {} is not a positive power of two", v.preview()))),
            },
        };

        let mut raw_infos = Vec::new();
        let mut index = HashMap::new();
        for i in 0..n_tensors {
            let name = r.string(&format!("name of tensor {i}"))?;
            if index.insert(name.clone(), raw_infos.len()).is_some() {
                return Err(r.err(format!("tensor `{name}` appears twice")));
            }
            let n_dims = r.u32(&name)?;
            if n_dims > MAX_DIMS {
                return Err(r.err(format!("tensor `{name}`: {n_dims} dimensions (ggml has at most {MAX_DIMS})")));
            }
            let mut dims = (0..n_dims).map(|_| r.u64(&name)).collect::<Result<Vec<_>, _>>()?;
            let dtype = GgmlType::from_id(r.u32(&name)?);
            let offset = r.u64(&name)?;
            dims.reverse();
            raw_infos.push((name, dims, dtype, offset));
        }
        let data_offset = r
            .pos
            .div_ceil(alignment)
            .checked_mul(alignment)
            .ok_or_else(|| r.err("the data section starts past any possible file size"))?;

        let tensors = raw_infos
            .into_iter()
            .map(|(name, dims, dtype, rel)| {
                let terr = |m: String| ModelError::format(path, format!("tensor `{name}`: {m}"));
                let numel = dims
                    .iter()
                    .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                    .ok_or_else(|| terr(format!("dimensions {dims:?} overflow")))?;
                if !rel.is_multiple_of(alignment) {
                    return Err(terr(format!("data offset {rel} is not a multiple of the alignment {alignment}")));
                }
                let offset = data_offset
                    .checked_add(rel)
                    .filter(|&o| o <= len)
                    .ok_or_else(|| terr(format!("data offset {rel} is past the end of the file ({len} bytes)")))?;
                let size = match dtype.block() {
                    None => None,
                    Some((block_values, _)) => {
                        let ne0 = dims.last().copied().unwrap_or(1);
                        let size =
                            dtype.bytes_for(numel).filter(|_| ne0.is_multiple_of(block_values)).ok_or_else(|| {
                                terr(format!("{dtype:?} needs rows of whole {block_values}-value blocks, got {dims:?}"))
                            })?;
                        if offset.checked_add(size).is_none_or(|end| end > len) {
                            return Err(terr(format!(
                                "data [{offset}, +{size}) runs past the end of the file ({len} bytes): truncated"
                            )));
                        }
                        Some(size)
                    }
                };
                let shape = dims
                    .iter()
                    .map(|&d| usize::try_from(d))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| terr(format!("dimensions {dims:?} do not fit in memory")))?;
                Ok(GgufTensorInfo { name, shape, dtype, offset, size })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;

        Ok(Self { path: path.to_path_buf(), version, alignment, data_offset, metadata, tensors, index })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The data alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// All metadata, by key.
    pub fn metadata(&self) -> &BTreeMap<String, GgufValue> {
        &self.metadata
    }

    /// The metadata value `key`, if present.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    fn need(&self, key: &str) -> Result<&GgufValue, ModelError> {
        self.get(key).ok_or_else(|| ModelError::config(&self.path, format!("missing metadata `{key}`")))
    }

    fn wrong(&self, key: &str, want: &str, v: &GgufValue) -> ModelError {
        ModelError::config(&self.path, format!("metadata `{key}` is {}, expected {want}", v.preview()))
    }

    fn integer<T: TryFrom<i128>>(&self, key: &str, want: &str) -> Result<T, ModelError> {
        let v = self.need(key)?;
        v.as_i128().and_then(|i| T::try_from(i).ok()).ok_or_else(|| self.wrong(key, want, v))
    }

    /// The integer `key` as a `u32` (any integer type whose value fits is accepted).
    pub fn get_u32(&self, key: &str) -> Result<u32, ModelError> {
        self.integer(key, "an integer in u32 range")
    }

    /// The integer `key` as a `u64`.
    pub fn get_u64(&self, key: &str) -> Result<u64, ModelError> {
        self.integer(key, "a non-negative integer")
    }

    /// The integer `key` as a `usize`.
    pub fn get_usize(&self, key: &str) -> Result<usize, ModelError> {
        self.integer(key, "a non-negative integer")
    }

    /// The number `key` as an `f64` (floats and integers are accepted).
    pub fn get_f64(&self, key: &str) -> Result<f64, ModelError> {
        let v = self.need(key)?;
        v.as_f64().ok_or_else(|| self.wrong(key, "a number", v))
    }

    /// The number `key` as an `f32`.
    pub fn get_f32(&self, key: &str) -> Result<f32, ModelError> {
        self.get_f64(key).map(|v| v as f32)
    }

    /// The bool `key`.
    pub fn get_bool(&self, key: &str) -> Result<bool, ModelError> {
        match self.need(key)? {
            GgufValue::Bool(b) => Ok(*b),
            v => Err(self.wrong(key, "a bool", v)),
        }
    }

    /// The string `key`.
    pub fn get_str(&self, key: &str) -> Result<&str, ModelError> {
        let v = self.need(key)?;
        v.as_str().ok_or_else(|| self.wrong(key, "a string", v))
    }

    /// The array `key`.
    pub fn get_array(&self, key: &str) -> Result<&[GgufValue], ModelError> {
        let v = self.need(key)?;
        v.as_array().ok_or_else(|| self.wrong(key, "an array", v))
    }

    /// The array of strings `key`.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, ModelError> {
        self.get_array(key)?
            .iter()
            .map(|v| v.as_str().ok_or_else(|| self.wrong(key, "an array of strings", v)))
            .collect()
    }

    /// The array of integers `key` (any integer element type), as `i64`.
    pub fn get_int_array(&self, key: &str) -> Result<Vec<i64>, ModelError> {
        self.get_array(key)?
            .iter()
            .map(|v| v.as_i128().and_then(|i| i64::try_from(i).ok()).ok_or_else(|| self.wrong(key, "integers", v)))
            .collect()
    }

    /// The array of numbers `key`, as `f32`.
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>, ModelError> {
        self.get_array(key)?
            .iter()
            .map(|v| v.as_f64().map(|f| f as f32).ok_or_else(|| self.wrong(key, "numbers", v)))
            .collect()
    }

    /// All tensor descriptions, in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// The description of the tensor `name` (GGUF name).
    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.index.get(name).and_then(|&i| self.tensors.get(i))
    }

    /// The raw bytes of a tensor.
    pub fn read_raw(&self, info: &GgufTensorInfo) -> Result<Vec<u8>, ModelError> {
        let size = info.size.ok_or_else(|| self.unsupported(info))?;
        let len = usize::try_from(size)
            .map_err(|_| ModelError::format(&self.path, format!("tensor `{}` is too large", info.name)))?;
        // Re-checked: the file may have been replaced (by a FIFO, or a shorter file) since it was parsed.
        let (mut file, file_len) =
            ramole_core::fs::open_regular(&self.path).map_err(|e| ModelError::io(&self.path, e))?;
        if info.offset.checked_add(size).is_none_or(|end| end > file_len) {
            return Err(ModelError::format(
                &self.path,
                format!(
                    "tensor `{}`: data [{}, +{size}) runs past the end of the file ({file_len} bytes)",
                    info.name, info.offset
                ),
            ));
        }
        file.seek(SeekFrom::Start(info.offset)).map_err(|e| ModelError::io(&self.path, e))?;
        let mut buf = vec![0u8; len];
        file.read_exact(&mut buf).map_err(|e| {
            ModelError::format(&self.path, format!("tensor `{}`: cannot read its {size} bytes: {e}", info.name))
        })?;
        Ok(buf)
    }

    /// The tensor `name` (GGUF name) as f32, in PyTorch order; `None` if the file has no such tensor.
    pub fn dequantize(&self, name: &str) -> Result<Option<HostTensor>, ModelError> {
        let Some(info) = self.tensor(name) else { return Ok(None) };
        let raw = self.read_raw(info)?;
        let data = dequantize(info.dtype, &raw, info.numel()).ok_or_else(|| self.unsupported(info))?;
        HostTensor::new(info.shape.clone(), data)
            .map(Some)
            .ok_or_else(|| ModelError::format(&self.path, format!("tensor `{name}`: data does not match its shape")))
    }

    fn unsupported(&self, info: &GgufTensorInfo) -> ModelError {
        ModelError::UnsupportedDtype {
            path: self.path.clone(),
            tensor: info.name.clone(),
            dtype: format!("{:?} (ggml type {})", info.dtype, info.dtype.id()),
        }
    }
}

/// GGUF block tensor names and their Hugging Face Llama counterparts.
const BLOCK_NAMES: [(&str, &str); 9] = [
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
];

/// GGUF top-level tensor names and their Hugging Face Llama counterparts.
const TOP_NAMES: [(&str, &str); 3] =
    [("token_embd", "model.embed_tokens"), ("output_norm", "model.norm"), ("output", "lm_head")];

/// The Hugging Face name of the GGUF tensor `gguf` (`blk.3.attn_q.weight` →
/// `model.layers.3.self_attn.q_proj.weight`), or `None` if it has none.
pub fn hf_name(gguf: &str) -> Option<String> {
    let (stem, suffix) = gguf.rsplit_once('.')?;
    if let Some(rest) = stem.strip_prefix("blk.") {
        let (layer, part) = rest.split_once('.')?;
        layer.parse::<usize>().ok()?;
        let (_, hf) = BLOCK_NAMES.iter().find(|(g, _)| *g == part)?;
        return Some(format!("model.layers.{layer}.{hf}.{suffix}"));
    }
    TOP_NAMES.iter().find(|(g, _)| *g == stem).map(|(_, hf)| format!("{hf}.{suffix}"))
}

/// The GGUF name of the Hugging Face tensor `hf`, the inverse of [`hf_name`].
pub fn gguf_name(hf: &str) -> Option<String> {
    let (stem, suffix) = hf.rsplit_once('.')?;
    if let Some(rest) = stem.strip_prefix("model.layers.") {
        let (layer, part) = rest.split_once('.')?;
        layer.parse::<usize>().ok()?;
        let (g, _) = BLOCK_NAMES.iter().find(|(_, h)| *h == part)?;
        return Some(format!("blk.{layer}.{g}.{suffix}"));
    }
    TOP_NAMES.iter().find(|(_, h)| *h == stem).map(|(g, _)| format!("{g}.{suffix}"))
}

/// Undoes llama.cpp's row permutation of a q or k weight `[out, in]` with `n_heads` heads:
/// the file stores, per head, rows in the order `(i, j)` of `[head_dim / 2, 2]`; Hugging Face (rotate-half
/// RoPE) wants `(j, i)`. `None` if `out` is not a multiple of `2 · n_heads`.
pub fn unpermute_rows(t: &HostTensor, n_heads: usize) -> Option<HostTensor> {
    let [out, cols] = t.shape[..] else { return None };
    if out.checked_mul(cols)? != t.data.len() {
        return None;
    }
    if t.data.is_empty() {
        // Nothing to move (and `out` may be huge when `cols` is 0).
        return (n_heads > 0 && out.is_multiple_of(n_heads.checked_mul(2)?)).then(|| t.clone());
    }
    let order = unpermute_order(out, n_heads)?;
    let data = order.iter().flat_map(|&src| t.data[src * cols..(src + 1) * cols].iter().copied()).collect();
    HostTensor::new(t.shape.clone(), data)
}

/// The source row of every row of an un-permuted q or k weight with `out` rows and `n_heads` heads
/// ([`unpermute_rows`]); `None` if `out` is not a multiple of `2 · n_heads`.
pub fn unpermute_order(out: usize, n_heads: usize) -> Option<Vec<usize>> {
    if n_heads == 0 || !out.is_multiple_of(n_heads.checked_mul(2)?) {
        return None;
    }
    let head_dim = out / n_heads;
    let half = head_dim / 2;
    let mut order = vec![0; out];
    for h in 0..n_heads {
        for i in 0..half {
            for j in 0..2 {
                // The file's row (i, j) of [half, 2] is Hugging Face's row (j, i) of [2, half].
                order[h * head_dim + j * half + i] = h * head_dim + i * 2 + j;
            }
        }
    }
    Some(order)
}

/// The weights of a llama.cpp Llama GGUF, served under Hugging Face names in PyTorch layout, q and k
/// rows un-permuted (so the model uses Hugging Face rotate-half RoPE). Tensors without a Hugging Face
/// counterpart keep their GGUF names.
#[derive(Debug, Clone)]
pub struct GgufWeights {
    file: GgufFile,
}

impl GgufWeights {
    /// The error for a q/k weight whose rows do not split into its heads (GGUF permutes them per head).
    fn uneven_heads(&self, gguf: &str, rows: usize, heads: usize) -> ModelError {
        ModelError::format(
            self.file.path(),
            format!("tensor `{gguf}`: {rows} rows cannot be split into {heads} heads of even size"),
        )
    }

    /// Opens and parses the GGUF file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        GgufFile::open(path).map(Self::new)
    }

    /// Serves the weights of an already parsed file.
    pub fn new(file: GgufFile) -> Self {
        Self { file }
    }

    /// The parsed file (metadata, tensor descriptions).
    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// The model's hyper-parameters from the `llama.*` and `tokenizer.ggml.*` metadata.
    ///
    /// `general.architecture` must be `llama`; `rope.freq_base` defaults to 10000; `vocab_size` falls back
    /// to the length of the token list; `head_dim` is `attention.key_length` if present, else
    /// `embedding_length / head_count`; the embeddings are tied when the file has no `output.weight`.
    pub fn llama_config(&self) -> Result<LlamaConfig, ModelError> {
        let f = &self.file;
        let arch = f.get_str("general.architecture")?;
        if arch != "llama" {
            return Err(ModelError::config(f.path(), format!("general.architecture is `{arch}`, expected `llama`")));
        }
        if let Some(kind) = f.get("llama.rope.scaling.type").and_then(GgufValue::as_str)
            && kind != "none"
        {
            return Err(ModelError::config(f.path(), format!("RoPE scaling `{kind}` is not supported")));
        }
        let opt = |key: &str| f.get(key).is_some();
        let hidden_size = f.get_usize("llama.embedding_length")?;
        let num_attention_heads = f.get_usize("llama.attention.head_count")?;
        let head_dim = match opt("llama.attention.key_length") {
            true => f.get_usize("llama.attention.key_length")?,
            false => hidden_size.checked_div(num_attention_heads).unwrap_or(0),
        };
        let vocab_size = match opt("llama.vocab_size") {
            true => f.get_usize("llama.vocab_size")?,
            false => f.get_array("tokenizer.ggml.tokens")?.len(),
        };
        let config = LlamaConfig {
            vocab_size,
            hidden_size,
            intermediate_size: f.get_usize("llama.feed_forward_length")?,
            num_hidden_layers: f.get_usize("llama.block_count")?,
            num_attention_heads,
            num_key_value_heads: match opt("llama.attention.head_count_kv") {
                true => f.get_usize("llama.attention.head_count_kv")?,
                false => num_attention_heads,
            },
            head_dim,
            rms_norm_eps: f.get_f64("llama.attention.layer_norm_rms_epsilon")?,
            rope_theta: if opt("llama.rope.freq_base") { f.get_f64("llama.rope.freq_base")? } else { 10000.0 },
            max_position_embeddings: f.get_usize("llama.context_length")?,
            tie_word_embeddings: f.tensor("output.weight").is_none(),
            bos_token_id: opt("tokenizer.ggml.bos_token_id")
                .then(|| f.get_u32("tokenizer.ggml.bos_token_id"))
                .transpose()?,
            eos_token_ids: opt("tokenizer.ggml.eos_token_id")
                .then(|| f.get_u32("tokenizer.ggml.eos_token_id"))
                .transpose()?
                .into_iter()
                .collect(),
        };
        config.validate().map_err(|m| ModelError::config(f.path(), m))?;
        Ok(config)
    }

    /// Head count used to un-permute the q (`attention.head_count`) or k (`attention.head_count_kv`) rows.
    fn permuted_heads(&self, gguf: &str) -> Result<Option<usize>, ModelError> {
        let Some(part) = gguf.strip_prefix("blk.").and_then(|r| r.split('.').nth(1)) else { return Ok(None) };
        let q = "llama.attention.head_count";
        match part {
            "attn_q" => self.file.get_usize(q).map(Some),
            "attn_k" if self.file.get("llama.attention.head_count_kv").is_some() => {
                self.file.get_usize("llama.attention.head_count_kv").map(Some)
            }
            "attn_k" => self.file.get_usize(q).map(Some),
            _ => Ok(None),
        }
    }
}

impl WeightSource for GgufWeights {
    fn path(&self) -> &Path {
        self.file.path()
    }

    fn get(&self, name: &str) -> Result<Option<HostTensor>, ModelError> {
        let gguf = gguf_name(name).unwrap_or_else(|| name.to_string());
        let Some(t) = self.file.dequantize(&gguf)? else { return Ok(None) };
        if t.shape.len() != 2 {
            return Ok(Some(t));
        }
        match self.permuted_heads(&gguf)? {
            None => Ok(Some(t)),
            Some(heads) => {
                unpermute_rows(&t, heads).map(Some).ok_or_else(|| self.uneven_heads(&gguf, t.shape[0], heads))
            }
        }
    }

    fn names(&self) -> Vec<String> {
        self.file.tensors().iter().map(|t| hf_name(&t.name).unwrap_or_else(|| t.name.clone())).collect()
    }

    fn get_quantized(&self, name: &str) -> Result<Option<QMatrix>, ModelError> {
        let gguf = gguf_name(name).unwrap_or_else(|| name.to_string());
        let Some(info) = self.file.tensor(&gguf) else { return Ok(None) };
        let format = match info.dtype {
            GgmlType::Q4_0 => QuantFormat::Q4_0,
            GgmlType::Q4_1 => QuantFormat::Q4_1,
            GgmlType::Q8_0 => QuantFormat::Q8_0,
            _ => return Ok(None),
        };
        let [rows, cols] = info.shape[..] else { return Ok(None) };
        let raw = self.file.read_raw(info)?;
        let q = QMatrix::from_ggml(format, rows, cols, &raw, &format!("`{gguf}`")).map_err(|e| match e {
            CoreError::NonFinite { .. } => ModelError::NonFinite { path: self.path().into(), tensor: gguf.clone() },
            other => ModelError::format(self.path(), other.to_string()),
        })?;
        match self.permuted_heads(&gguf)? {
            None => Ok(Some(q)),
            Some(heads) => unpermute_order(rows, heads)
                .map(|order| Some(q.permute_rows(&order)))
                .ok_or_else(|| self.uneven_heads(&gguf, rows, heads)),
        }
    }
}

/// A minimal GGUF writer (little-endian, version 3): small model files for tests and tools.
pub mod writer {
    use super::{GgmlType, GgufValue};

    /// One tensor to write: name, PyTorch-order shape, type, raw data.
    pub struct RawTensor {
        /// The tensor's name.
        pub name: String,
        /// Its shape in PyTorch order (written reversed, as ggml lists dims).
        pub shape: Vec<u64>,
        /// Its type.
        pub dtype: GgmlType,
        /// Its raw bytes.
        pub data: Vec<u8>,
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }

    fn type_id(v: &GgufValue) -> u32 {
        match v {
            GgufValue::U8(_) => 0,
            GgufValue::I8(_) => 1,
            GgufValue::U16(_) => 2,
            GgufValue::I16(_) => 3,
            GgufValue::U32(_) => 4,
            GgufValue::I32(_) => 5,
            GgufValue::F32(_) => 6,
            GgufValue::Bool(_) => 7,
            GgufValue::String(_) => 8,
            GgufValue::Array(_) => 9,
            GgufValue::U64(_) => 10,
            GgufValue::I64(_) => 11,
            GgufValue::F64(_) => 12,
        }
    }

    fn value(out: &mut Vec<u8>, v: &GgufValue) {
        match v {
            GgufValue::U8(x) => out.push(*x),
            GgufValue::I8(x) => out.extend(x.to_le_bytes()),
            GgufValue::U16(x) => out.extend(x.to_le_bytes()),
            GgufValue::I16(x) => out.extend(x.to_le_bytes()),
            GgufValue::U32(x) => out.extend(x.to_le_bytes()),
            GgufValue::I32(x) => out.extend(x.to_le_bytes()),
            GgufValue::F32(x) => out.extend(x.to_le_bytes()),
            GgufValue::Bool(x) => out.push(u8::from(*x)),
            GgufValue::String(s) => string(out, s),
            GgufValue::Array(a) => {
                out.extend(a.first().map_or(4, type_id).to_le_bytes());
                out.extend((a.len() as u64).to_le_bytes());
                a.iter().for_each(|e| value(out, e));
            }
            GgufValue::U64(x) => out.extend(x.to_le_bytes()),
            GgufValue::I64(x) => out.extend(x.to_le_bytes()),
            GgufValue::F64(x) => out.extend(x.to_le_bytes()),
        }
    }

    /// The bytes of a GGUF v3 file with `metadata` and `tensors`, data aligned to `alignment`.
    pub fn gguf_bytes(metadata: &[(&str, GgufValue)], tensors: &[RawTensor], alignment: u64) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(b"GGUF");
        out.extend(3u32.to_le_bytes());
        out.extend((tensors.len() as u64).to_le_bytes());
        out.extend((metadata.len() as u64).to_le_bytes());
        for (k, v) in metadata {
            string(&mut out, k);
            out.extend(type_id(v).to_le_bytes());
            value(&mut out, v);
        }
        let align = |n: u64| n.div_ceil(alignment) * alignment;
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for t in tensors {
            string(&mut out, &t.name);
            out.extend((t.shape.len() as u32).to_le_bytes());
            t.shape.iter().rev().for_each(|d| out.extend(d.to_le_bytes()));
            out.extend(t.dtype.id().to_le_bytes());
            out.extend(offset.to_le_bytes());
            offsets.push(offset);
            offset = align(offset + t.data.len() as u64);
        }
        let data_start = align(out.len() as u64);
        out.resize(data_start as usize, 0);
        for (t, off) in tensors.iter().zip(offsets) {
            out.resize((data_start + off) as usize, 0);
            out.extend(&t.data);
        }
        out
    }

    /// An F32 tensor.
    pub fn f32_tensor(name: &str, shape: &[u64], values: &[f32]) -> RawTensor {
        RawTensor {
            name: name.into(),
            shape: shape.to_vec(),
            dtype: GgmlType::F32,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::writer::{RawTensor, f32_tensor, gguf_bytes};
    use super::*;

    fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write gguf");
        path
    }

    fn s(v: &str) -> GgufValue {
        GgufValue::String(v.into())
    }

    fn assert_format_err(result: Result<GgufFile, ModelError>, path: &Path, needle: &str) {
        match result {
            Err(ModelError::Format { path: p, message }) => {
                assert_eq!(p, path);
                assert!(message.contains(needle), "message `{message}` lacks `{needle}`");
            }
            other => panic!("expected a Format error containing `{needle}`, got {other:?}"),
        }
    }

    #[test]
    fn metadata_round_trips_every_type() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = vec![
            ("general.architecture", s("llama")),
            ("u8", GgufValue::U8(200)),
            ("i8", GgufValue::I8(-5)),
            ("u16", GgufValue::U16(60000)),
            ("i16", GgufValue::I16(-300)),
            ("u32", GgufValue::U32(4_000_000_000)),
            ("i32", GgufValue::I32(-7)),
            ("f32", GgufValue::F32(1e-5)),
            ("bool", GgufValue::Bool(true)),
            ("u64", GgufValue::U64(1 << 40)),
            ("i64", GgufValue::I64(-(1 << 40))),
            ("f64", GgufValue::F64(0.125)),
            ("strs", GgufValue::Array(vec![s("a"), s("ü b"), s("")])),
            ("ints", GgufValue::Array(vec![GgufValue::I32(3), GgufValue::I32(-1)])),
            ("floats", GgufValue::Array(vec![GgufValue::F32(0.5), GgufValue::F32(2.0)])),
            ("nested", GgufValue::Array(vec![GgufValue::Array(vec![GgufValue::U8(1)])])),
            ("empty", GgufValue::Array(vec![])),
        ];
        let path = write(&dir, "m.gguf", &gguf_bytes(&meta, &[], 32));
        let f = GgufFile::open(&path).expect("open");
        assert_eq!(f.version(), 3);
        assert_eq!(f.alignment(), 32);
        for (k, v) in &meta {
            assert_eq!(f.get(k), Some(v), "{k}");
        }
        assert_eq!(f.get_u32("u32").expect("u32"), 4_000_000_000);
        assert_eq!(f.get_u32("u16").expect("u16 widens"), 60000);
        assert_eq!(f.get_u64("u64").expect("u64"), 1 << 40);
        assert_eq!(f.get_f64("f32").expect("f32"), 1e-5, "f32 widens through its decimal form");
        assert_eq!(f.get_f32("f64").expect("f64"), 0.125);
        assert!(f.get_bool("bool").expect("bool"));
        assert_eq!(f.get_str("general.architecture").expect("str"), "llama");
        assert_eq!(f.get_str_array("strs").expect("strs"), vec!["a", "ü b", ""]);
        assert_eq!(f.get_int_array("ints").expect("ints"), vec![3, -1]);
        assert_eq!(f.get_f32_array("floats").expect("floats"), vec![0.5, 2.0]);

        assert!(matches!(f.get_u32("i32"), Err(ModelError::Config { message, .. }) if message.contains("`i32`")));
        assert!(matches!(f.get_u32("u64"), Err(ModelError::Config { .. })), "2^40 does not fit in u32");
        assert!(matches!(f.get_str("u8"), Err(ModelError::Config { .. })));
        assert!(matches!(f.get_str("nope"), Err(ModelError::Config { message, .. }) if message.contains("missing")));
        assert!(matches!(f.get_str_array("ints"), Err(ModelError::Config { .. })));
    }

    /// Q8_0 block: d = 0.5, q = -16..16.
    fn q8_0_block() -> (Vec<u8>, Vec<f32>) {
        let mut raw = f16::from_f32(0.5).to_le_bytes().to_vec();
        raw.extend((-16i8..16).map(|q| q as u8));
        (raw, (-16..16).map(|q| 0.5 * q as f32).collect())
    }

    /// Q4_0 block: d = 2, byte j = (15 - j % 16) << 4 | j.
    fn q4_0_block() -> (Vec<u8>, Vec<f32>) {
        let mut raw = f16::from_f32(2.0).to_le_bytes().to_vec();
        raw.extend((0u8..16).map(|j| (15 - j) << 4 | j));
        let mut want: Vec<f32> = (0..16).map(|j| 2.0 * (j as f32 - 8.0)).collect();
        want.extend((0..16).map(|j| 2.0 * ((15 - j) as f32 - 8.0)));
        (raw, want)
    }

    /// Q4_1 block: d = 0.25, m = -1, byte j = (j / 2) << 4 | (15 - j).
    fn q4_1_block() -> (Vec<u8>, Vec<f32>) {
        let mut raw = f16::from_f32(0.25).to_le_bytes().to_vec();
        raw.extend(f16::from_f32(-1.0).to_le_bytes());
        raw.extend((0u8..16).map(|j| (j / 2) << 4 | (15 - j)));
        let mut want: Vec<f32> = (0..16).map(|j| 0.25 * (15 - j) as f32 - 1.0).collect();
        want.extend((0..16).map(|j| 0.25 * (j / 2) as f32 - 1.0));
        (raw, want)
    }

    #[test]
    fn dequantises_each_type_to_hand_computed_values() {
        let (q8, q8_want) = q8_0_block();
        assert_eq!(dequantize(GgmlType::Q8_0, &q8, 32).expect("q8_0"), q8_want);
        let (q40, q40_want) = q4_0_block();
        assert_eq!(dequantize(GgmlType::Q4_0, &q40, 32).expect("q4_0"), q40_want);
        let (q41, q41_want) = q4_1_block();
        assert_eq!(dequantize(GgmlType::Q4_1, &q41, 32).expect("q4_1"), q41_want);
        // Spot checks written out by hand: Q4_1 value 0 is low nibble 15 → 0.25·15 − 1; value 16 is
        // high nibble 0 → −1; Q4_0 value 31 is high nibble 0 → 2·(0 − 8).
        assert_eq!((q41_want[0], q41_want[16], q41_want[31]), (2.75, -1.0, 0.75));
        assert_eq!(q40_want[31], -16.0);

        let vals = [1.5f32, -2.25, 0.0, 65504.0];
        let f16s: Vec<u8> = vals.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect();
        let bf16s: Vec<u8> = vals.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes()).collect();
        let f32s: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(dequantize(GgmlType::F16, &f16s, 4).expect("f16"), vals);
        assert_eq!(dequantize(GgmlType::BF16, &bf16s, 4).expect("bf16")[..3], vals[..3]);
        assert_eq!(dequantize(GgmlType::F32, &f32s, 4).expect("f32"), vals);

        assert_eq!(dequantize(GgmlType::Q8_0, &q8[..33], 32), None, "short data");
        assert_eq!(dequantize(GgmlType::Q4K, &[0; 144], 256), None, "unsupported type");
    }

    #[test]
    fn tensors_load_in_pytorch_order_and_unsupported_types_are_typed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (q8, q8_want) = q8_0_block();
        let (q41, q41_want) = q4_1_block();
        let tensors = vec![
            f32_tensor("a", &[2, 3], &[0., 1., 2., 3., 4., 5.]),
            RawTensor { name: "q8".into(), shape: vec![2, 32], dtype: GgmlType::Q8_0, data: [q8.clone(), q8].concat() },
            RawTensor { name: "q41".into(), shape: vec![1, 32], dtype: GgmlType::Q4_1, data: q41 },
            RawTensor { name: "k".into(), shape: vec![256], dtype: GgmlType::Q4K, data: vec![0; 144] },
        ];
        let path = write(&dir, "t.gguf", &gguf_bytes(&[("general.alignment", GgufValue::U32(64))], &tensors, 64));
        let f = GgufFile::open(&path).expect("open");
        assert_eq!(f.alignment(), 64);
        assert!(f.data_offset().is_multiple_of(64));
        let a = f.dequantize("a").expect("a").expect("present");
        assert_eq!((a.shape, a.data), (vec![2, 3], vec![0., 1., 2., 3., 4., 5.]));
        let q = f.dequantize("q8").expect("q8").expect("present");
        assert_eq!(q.shape, vec![2, 32]);
        assert_eq!(q.data, [q8_want.clone(), q8_want].concat());
        assert_eq!(f.dequantize("q41").expect("q41").expect("present").data, q41_want);
        assert!(f.dequantize("none").expect("lookup").is_none());
        assert!(matches!(f.dequantize("k"), Err(ModelError::UnsupportedDtype { tensor, .. }) if tensor == "k"));
    }

    #[test]
    fn corrupt_files_are_typed_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = [("general.architecture", s("llama")), ("tokens", GgufValue::Array(vec![s("x"); 4]))];
        let good = gguf_bytes(&meta, &[f32_tensor("w", &[4, 8], &[1.0; 32])], 32);
        let p = write(&dir, "good.gguf", &good);
        GgufFile::open(&p).expect("the reference file opens");

        let mut v = good.clone();
        v[4..8].copy_from_slice(&2u32.to_le_bytes());
        let p = write(&dir, "v2.gguf", &v);
        assert_eq!(GgufFile::open(&p).expect("GGUF v2 has the same layout").version(), 2);

        let p = write(&dir, "magic.gguf", &[b"GGUX", &good[4..]].concat());
        assert_format_err(GgufFile::open(&p), &p, "not a GGUF file");
        let mut v = good.clone();
        v[4..8].copy_from_slice(&7u32.to_le_bytes());
        let p = write(&dir, "version.gguf", &v);
        assert_format_err(GgufFile::open(&p), &p, "version 7");
        // Every truncation point: the header ones fail to parse, the data ones fail the size check.
        for cut in [0, 3, 10, 30, 60, good.len() - 100, good.len() - 1] {
            let p = write(&dir, &format!("cut{cut}.gguf"), &good[..cut]);
            assert!(matches!(GgufFile::open(&p), Err(ModelError::Format { path, .. }) if path == p), "cut at {cut}");
        }
        let p = write(&dir, "cut_data.gguf", &good[..good.len() - 1]);
        assert_format_err(GgufFile::open(&p), &p, "tensor `w`");

        // Absurd counts and lengths are refused before any allocation.
        let mut v = good.clone();
        v[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        let p = write(&dir, "ntensors.gguf", &v);
        assert_format_err(GgufFile::open(&p), &p, "tensor count");
        let mut v = good.clone();
        v[16..24].copy_from_slice(&(1u64 << 60).to_le_bytes());
        let p = write(&dir, "nkv.gguf", &v);
        assert_format_err(GgufFile::open(&p), &p, "metadata count");
        let mut v = good.clone();
        v[24..32].copy_from_slice(&(u64::MAX - 3).to_le_bytes()); // first key's length
        let p = write(&dir, "keylen.gguf", &v);
        assert_format_err(GgufFile::open(&p), &p, "length of metadata key 0");
        let count_at = good.windows(8).position(|w| w == 4u64.to_le_bytes()).expect("array count");
        let mut v = good.clone();
        v[count_at..count_at + 8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        let p = write(&dir, "arraylen.gguf", &v);
        assert_format_err(GgufFile::open(&p), &p, "element count of metadata `tokens`");

        // A tensor whose data lies outside the file, or whose dims overflow.
        let dims_at = good.windows(1).rposition(|w| w == b"w").expect("tensor name") + 1 + 4;
        let mut v = good.clone();
        v[dims_at..dims_at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let p = write(&dir, "bigdims.gguf", &v);
        assert_format_err(GgufFile::open(&p), &p, "tensor `w`");
        v[dims_at + 8..dims_at + 16].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let p = write(&dir, "overflow.gguf", &v);
        assert_format_err(GgufFile::open(&p), &p, "overflow");
        let mut v = good.clone();
        v[dims_at - 4..dims_at].copy_from_slice(&9u32.to_le_bytes());
        let p = write(&dir, "ndims.gguf", &v);
        assert_format_err(GgufFile::open(&p), &p, "9 dimensions");
    }

    fn tiny_llama(dir: &tempfile::TempDir, with_output: bool) -> (PathBuf, Vec<f32>, Vec<f32>) {
        // 2 query heads, 1 KV head, head_dim 4, hidden 8, ffn 16, 1 layer, vocab 5.
        let q: Vec<f32> = (0..64).map(|v| v as f32).collect(); // [8, 8]
        let k: Vec<f32> = (0..32).map(|v| -(v as f32)).collect(); // [4, 8]
        let meta = vec![
            ("general.architecture", s("llama")),
            ("llama.embedding_length", GgufValue::U32(8)),
            ("llama.feed_forward_length", GgufValue::U32(16)),
            ("llama.block_count", GgufValue::U32(1)),
            ("llama.attention.head_count", GgufValue::U32(2)),
            ("llama.attention.head_count_kv", GgufValue::U32(1)),
            ("llama.attention.layer_norm_rms_epsilon", GgufValue::F32(1e-5)),
            ("llama.context_length", GgufValue::U32(128)),
            ("tokenizer.ggml.tokens", GgufValue::Array(["a", "b", "c", "d", "e"].map(s).to_vec())),
            ("tokenizer.ggml.bos_token_id", GgufValue::U32(1)),
            ("tokenizer.ggml.eos_token_id", GgufValue::U32(2)),
        ];
        let mut tensors = vec![
            f32_tensor("token_embd.weight", &[5, 8], &[0.5; 40]),
            f32_tensor("blk.0.attn_q.weight", &[8, 8], &q),
            f32_tensor("blk.0.attn_k.weight", &[4, 8], &k),
            f32_tensor("blk.0.attn_norm.weight", &[8], &[1.0; 8]),
            f32_tensor("output_norm.weight", &[8], &[2.0; 8]),
            f32_tensor("rope_freqs.weight", &[2], &[1.0, 1.0]),
        ];
        if with_output {
            tensors.push(f32_tensor("output.weight", &[5, 8], &[0.25; 40]));
        }
        (write(dir, &format!("llama{with_output}.gguf"), &gguf_bytes(&meta, &tensors, 32)), q, k)
    }

    #[test]
    fn llama_config_from_metadata() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, _, _) = tiny_llama(&dir, false);
        let w = GgufWeights::open(&path).expect("open");
        let c = w.llama_config().expect("config");
        assert_eq!(
            c,
            LlamaConfig {
                vocab_size: 5,
                hidden_size: 8,
                intermediate_size: 16,
                num_hidden_layers: 1,
                num_attention_heads: 2,
                num_key_value_heads: 1,
                head_dim: 4,
                rms_norm_eps: 1e-5,
                rope_theta: 10000.0,
                max_position_embeddings: 128,
                tie_word_embeddings: true,
                bos_token_id: Some(1),
                eos_token_ids: vec![2],
            }
        );
        let (path, _, _) = tiny_llama(&dir, true);
        assert!(!GgufWeights::open(&path).expect("open").llama_config().expect("config").tie_word_embeddings);

        let p = write(&dir, "gpt2.gguf", &gguf_bytes(&[("general.architecture", s("gpt2"))], &[], 32));
        let err = GgufWeights::open(&p).expect("open").llama_config().expect_err("not llama");
        assert!(matches!(err, ModelError::Config { message, .. } if message.contains("gpt2")));
    }

    #[test]
    fn names_map_both_ways_and_q_k_rows_are_unpermuted() {
        for (g, h) in [
            ("token_embd.weight", "model.embed_tokens.weight"),
            ("blk.12.attn_output.weight", "model.layers.12.self_attn.o_proj.weight"),
            ("blk.0.ffn_norm.weight", "model.layers.0.post_attention_layernorm.weight"),
            ("output.weight", "lm_head.weight"),
            ("output_norm.weight", "model.norm.weight"),
        ] {
            assert_eq!(hf_name(g).as_deref(), Some(h));
            assert_eq!(gguf_name(h).as_deref(), Some(g));
        }
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
        assert_eq!(hf_name("rope_freqs.weight"), None);

        let dir = tempfile::tempdir().expect("tempdir");
        let (path, q, k) = tiny_llama(&dir, false);
        let w = GgufWeights::open(&path).expect("open");
        let mut names = w.names();
        names.sort();
        assert!(names.contains(&"model.layers.0.self_attn.q_proj.weight".to_string()));
        assert!(names.contains(&"rope_freqs.weight".to_string()), "unmapped tensors keep their GGUF name");

        // head_dim 4 → per head, file rows (i, j) = [0,1,2,3] ↦ HF rows (j, i) = [0,2,1,3].
        let row_order =
            |heads: usize| -> Vec<usize> { (0..heads).flat_map(|h| [0, 2, 1, 3].map(|r| h * 4 + r)).collect() };
        let rows = |m: &[f32], order: Vec<usize>| -> Vec<f32> {
            order.into_iter().flat_map(|r| m[r * 8..(r + 1) * 8].to_vec()).collect()
        };
        let hq = w.load("model.layers.0.self_attn.q_proj.weight", &[8, 8]).expect("q");
        assert_eq!(hq.data, rows(&q, row_order(2)));
        let hk = w.load("model.layers.0.self_attn.k_proj.weight", &[4, 8]).expect("k (1 KV head)");
        assert_eq!(hk.data, rows(&k, row_order(1)));
        let emb = w.load("model.embed_tokens.weight", &[5, 8]).expect("embedding");
        assert_eq!(emb.data, vec![0.5; 40]);
        assert!(w.get("lm_head.weight").expect("lookup").is_none(), "tied: no lm_head");

        // The permutation llama.cpp's converter applies, then ours, is the identity.
        let t = HostTensor::new(vec![12, 3], (0..36).map(|v| v as f32).collect()).expect("tensor");
        let permute = |t: &HostTensor, n: usize| -> HostTensor {
            // HF → GGUF: reshape(n, 2, hd/2, in).swapaxes(1, 2)
            let (hd, cols) = (t.shape[0] / n, t.shape[1]);
            let mut data = vec![0.0; t.data.len()];
            for h in 0..n {
                for j in 0..2 {
                    for i in 0..hd / 2 {
                        let (src, dst) = (h * hd + j * hd / 2 + i, h * hd + i * 2 + j);
                        data[dst * cols..(dst + 1) * cols].copy_from_slice(&t.data[src * cols..(src + 1) * cols]);
                    }
                }
            }
            HostTensor { shape: t.shape.clone(), data }
        };
        for n in [1, 2, 3] {
            assert_eq!(unpermute_rows(&permute(&t, n), n).expect("unpermute"), t, "{n} heads");
        }
        assert_eq!(unpermute_rows(&t, 5), None, "12 rows do not split into 5 heads");
    }
}
