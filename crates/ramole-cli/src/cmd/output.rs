//! The files the commands write: checked before any work (not an input of the command, not a folder
//! or a device, in a folder that exists) and written atomically through `ramole_core::fs`.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use anyhow::Context;
use safetensors::{Dtype, View};

/// Refuses, before any work, an output `path` (given as `flag`, e.g. `--out`) that is one of
/// `inputs` or lies inside an input folder, that is not a regular file, or whose folder does not
/// exist.
pub fn check(flag: &str, path: &Path, inputs: &[&Path]) -> anyhow::Result<()> {
    ramole_core::fs::refuse_overwriting_inputs(path, inputs)
        .map_err(|e| anyhow::anyhow!("{flag} {}: {e}", path.display()))?;
    let target = ramole_core::fs::output_target(path).map_err(|e| anyhow::anyhow!("{flag} {}: {e}", path.display()))?;
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    anyhow::ensure!(dir.is_dir(), "{flag} {}: folder {} does not exist", path.display(), dir.display());
    Ok(())
}

/// The data of one output tensor, converted to bytes only while it is written.
#[derive(Debug, Clone, Copy)]
pub enum Data<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// Token ids, written as i64.
    I64(&'a [u32]),
}

/// One output tensor: shape and data.
#[derive(Debug, Clone)]
pub struct OutTensor<'a> {
    /// The shape.
    pub shape: Vec<usize>,
    /// The values.
    pub data: Data<'a>,
}

impl View for OutTensor<'_> {
    fn dtype(&self) -> Dtype {
        match self.data {
            Data::F32(_) => Dtype::F32,
            Data::I64(_) => Dtype::I64,
        }
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(match self.data {
            Data::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::I64(v) => v.iter().flat_map(|&x| i64::from(x).to_le_bytes()).collect(),
        })
    }

    fn data_len(&self) -> usize {
        match self.data {
            Data::F32(v) => v.len() * 4,
            Data::I64(v) => v.len() * 8,
        }
    }
}

/// Writes `tensors` as a safetensors file at `path`, atomically (a reader sees the old file or the
/// whole new one; a symlink is written through; no temporary file survives an error).
pub fn write_safetensors(path: &Path, tensors: Vec<(String, OutTensor<'_>)>) -> anyhow::Result<()> {
    let bytes = safetensors::serialize(tensors, None).with_context(|| format!("serializing {}", path.display()))?;
    ramole_core::fs::write_atomic(path, &bytes).with_context(|| format!("writing {}", path.display()))
}
