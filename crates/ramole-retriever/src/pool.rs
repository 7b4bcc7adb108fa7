//! The LoRA pool: one JSON file per LoRA in `<pool>/entries/`, loaded into an [`Index`].
//!
//! * **Add** writes `entries/.<name>.json.tmp-…` (fsync), then hard-links it to
//!   `entries/<name>.json` (which fails if the name exists, so two writers cannot both add the
//!   same name), removes the temporary name and fsyncs the folder. Cost: the LoRA's own samples.
//! * **Remove** unlinks `entries/<name>.json` and fsyncs the folder. Cost: O(dim) in memory.
//! * **Readers** list `entries/` and read only `*.json` names that do not start with a dot, so a
//!   file being written is never seen, and a crash mid-write leaves only an ignored temporary file
//!   next to the previous, intact entries.
//!
//! Names are safe file names: 1 to 128 bytes of ASCII letters, digits, `-`, `_`, `.`, not starting
//! with a dot.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::RetrieverError;
use crate::encoder::{DEFAULT_INSTRUCTION, SentenceEncoder};
use crate::index::{Index, normalized};

/// The longest LoRA name, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// The texts embedded per forward pass when a LoRA's samples are embedded.
pub const SAMPLE_BATCH: usize = 32;
const ENTRY_FORMAT: &str = "ramole-pool-entry/1";

/// One LoRA of the pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolEntry {
    /// The LoRA's name (a safe file name).
    pub name: String,
    /// The mean of its samples' embeddings (the index stores it normalised).
    pub embedding: Vec<f32>,
    /// How many samples the mean is over (at least 1).
    pub n_samples: usize,
    /// The PEFT adapter folder, if the LoRA has one (stored as an absolute path).
    pub adapter: Option<PathBuf>,
    /// The instruction prepended to each sample before embedding.
    pub instruction: String,
    /// The samples themselves (empty when only the embedding was given), so that the pool can be
    /// re-embedded with another encoder.
    pub samples: Vec<String>,
}

impl PoolEntry {
    /// An entry without adapter or stored samples, with the default instruction.
    pub fn new(name: impl Into<String>, embedding: Vec<f32>, n_samples: usize) -> Self {
        Self {
            name: name.into(),
            embedding,
            n_samples,
            adapter: None,
            instruction: DEFAULT_INSTRUCTION.into(),
            samples: Vec::new(),
        }
    }
}

/// The on-disk form of an entry; the embedding is stored as the hex of its little-endian f32
/// bytes, so that it reads back bit for bit.
#[derive(Serialize, Deserialize)]
struct EntryFile {
    format: String,
    name: String,
    dim: usize,
    n_samples: usize,
    adapter: Option<PathBuf>,
    instruction: String,
    #[serde(default)]
    samples: Vec<String>,
    embedding_f32le_hex: String,
}

fn to_hex(v: &[f32]) -> String {
    v.iter().flat_map(|x| x.to_le_bytes()).map(|b| format!("{b:02x}")).collect()
}

fn from_hex(s: &str) -> Option<Vec<f32>> {
    let bytes: Option<Vec<u8>> =
        (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect();
    let bytes = bytes?;
    (bytes.len().is_multiple_of(4))
        .then(|| bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

/// Checks that `name` is a safe file name for a pool entry.
pub fn validate_name(name: &str) -> Result<(), RetrieverError> {
    let reason = if name.is_empty() {
        Some("empty".to_string())
    } else if name.len() > MAX_NAME_LEN {
        Some(format!("longer than {MAX_NAME_LEN} bytes"))
    } else if name.starts_with('.') {
        Some("starts with a dot".to_string())
    } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        Some("may only hold ASCII letters, digits, `-`, `_` and `.` (no path separators or spaces)".to_string())
    } else {
        None
    };
    match reason {
        Some(reason) => Err(RetrieverError::InvalidName { name: name.into(), reason }),
        None => Ok(()),
    }
}

/// Checks that `dir` is a readable PEFT LoRA adapter: `adapter_config.json` parses and has a rank
/// `r` ≥ 1, `adapter_model.safetensors` exists, parses and holds tensors.
pub fn validate_adapter(dir: &Path) -> Result<(), RetrieverError> {
    let bad = |message: String| RetrieverError::Adapter { path: dir.into(), message };
    if !dir.is_dir() {
        return Err(bad("not a readable folder".into()));
    }
    let config_path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| bad(format!("adapter_config.json: {e}")))?;
    let config: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("adapter_config.json: {e}")))?;
    if let Some(kind) = config.get("peft_type").and_then(|v| v.as_str())
        && kind != "LORA"
    {
        return Err(bad(format!("adapter_config.json: peft_type is {kind}, not LORA")));
    }
    match config.get("r").and_then(serde_json::Value::as_u64) {
        Some(r) if r >= 1 => {}
        _ => return Err(bad("adapter_config.json: no rank `r` >= 1".into())),
    }
    let weights_path = dir.join("adapter_model.safetensors");
    let bytes = std::fs::read(&weights_path).map_err(|e| bad(format!("adapter_model.safetensors: {e}")))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(format!("adapter_model.safetensors: not a valid safetensors file: {e}")))?;
    if st.is_empty() {
        return Err(bad("adapter_model.safetensors holds no tensor".into()));
    }
    Ok(())
}

/// Reads a JSONL file of texts: each non-blank line is a JSON string or an object with a string
/// `input`. An empty file is an error.
pub fn read_jsonl_texts(path: &Path) -> Result<Vec<String>, RetrieverError> {
    let text = std::fs::read_to_string(path).map_err(|e| RetrieverError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad = |message: String| RetrieverError::JsonlLine { path: path.into(), line: i + 1, message };
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let text = match &value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Object(o) => match o.get("input") {
                Some(serde_json::Value::String(s)) => s.clone(),
                _ => return Err(bad("object without a string `input`".into())),
            },
            _ => return Err(bad("neither a JSON string nor an object with `input`".into())),
        };
        out.push(text);
    }
    if out.is_empty() {
        return Err(RetrieverError::EmptySamples { path: path.into() });
    }
    Ok(out)
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temporary name next to `path` (starts with a dot, so pool readers skip it).
fn temp_path(path: &Path) -> PathBuf {
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{file_name}.tmp-{}-{n}", std::process::id()))
}

/// Makes a folder's entries (new or removed names) durable.
fn sync_dir(dir: &Path) -> Result<(), RetrieverError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| RetrieverError::io(dir, e))
}

fn write_temp(tmp: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(tmp)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Writes `bytes` to `path` atomically: temporary file, fsync, rename, fsync of the folder.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RetrieverError> {
    let tmp = temp_path(path);
    let result = write_temp(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp); // best effort; readers ignore temporary names anyway
        return Err(RetrieverError::io(path, e));
    }
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Creates `path` atomically with `bytes`, failing with `AlreadyExists` if it exists.
fn create_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temp_path(path);
    let result = write_temp(&tmp, bytes).and_then(|()| match std::fs::hard_link(&tmp, path) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists && !path.exists() => {
            // A filesystem without hard links: rename is still atomic for readers, only two
            // writers racing on the same new name are no longer told apart.
            std::fs::rename(&tmp, path)
        }
        other => other,
    });
    let _ = std::fs::remove_file(&tmp); // the entry, if created, lives on under its own name
    result
}

/// A LoRA pool on disk and its in-memory index.
#[derive(Debug)]
pub struct LoraPool {
    dir: PathBuf,
    entries: HashMap<String, PoolEntry>,
    index: Index,
    instruction: String,
}

impl LoraPool {
    /// Opens the pool in `dir`, creating the folder if absent, and loads every entry.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, RetrieverError> {
        let dir = dir.as_ref().to_path_buf();
        let entries_dir = dir.join("entries");
        std::fs::create_dir_all(&entries_dir).map_err(|e| RetrieverError::io(&entries_dir, e))?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(&entries_dir)
            .map_err(|e| RetrieverError::io(&entries_dir, e))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                !n.starts_with('.') && n.ends_with(".json")
            })
            .collect();
        files.sort();
        let mut pool =
            Self { dir, entries: HashMap::new(), index: Index::new(0), instruction: DEFAULT_INSTRUCTION.into() };
        for path in files {
            // An entry removed between the listing and the read is simply gone.
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(RetrieverError::io(&path, e)),
            };
            let entry = Self::parse_entry(&path, &text)?;
            pool.insert(entry).map_err(|e| RetrieverError::format(&path, e.to_string()))?;
        }
        Ok(pool)
    }

    fn parse_entry(path: &Path, text: &str) -> Result<PoolEntry, RetrieverError> {
        let file: EntryFile = serde_json::from_str(text).map_err(|e| RetrieverError::format(path, e.to_string()))?;
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        if file.format != ENTRY_FORMAT || file.name != stem {
            return Err(RetrieverError::format(
                path,
                format!("not a `{ENTRY_FORMAT}` entry named after its file (name `{}`)", file.name),
            ));
        }
        let embedding = from_hex(&file.embedding_f32le_hex)
            .filter(|v| v.len() == file.dim)
            .ok_or_else(|| RetrieverError::format(path, format!("embedding is not {} hex-encoded f32", file.dim)))?;
        Ok(PoolEntry {
            name: file.name,
            embedding,
            n_samples: file.n_samples,
            adapter: file.adapter,
            instruction: file.instruction,
            samples: file.samples,
        })
    }

    /// Adds an entry to the in-memory state (index first: it validates).
    fn insert(&mut self, entry: PoolEntry) -> Result<(), RetrieverError> {
        if self.index.is_empty() {
            self.index = Index::new(entry.embedding.len());
        }
        self.index.add(&entry.name, entry.embedding.clone())?;
        self.entries.insert(entry.name.clone(), entry);
        Ok(())
    }

    /// The pool folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The instruction [`Self::add`] prepends to samples.
    pub fn instruction(&self) -> &str {
        &self.instruction
    }

    /// Sets the instruction [`Self::add`] prepends to samples (each entry records its own).
    pub fn set_instruction(&mut self, instruction: impl Into<String>) {
        self.instruction = instruction.into();
    }

    /// The entries, sorted by name.
    pub fn entries(&self) -> Vec<&PoolEntry> {
        let mut v: Vec<&PoolEntry> = self.entries.values().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// One entry.
    pub fn get(&self, name: &str) -> Option<&PoolEntry> {
        self.entries.get(name)
    }

    /// The index of the entries' embeddings.
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// The number of LoRAs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the pool is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn check_new(&self, name: &str, adapter: Option<&Path>) -> Result<Option<PathBuf>, RetrieverError> {
        validate_name(name)?;
        if self.entries.contains_key(name) {
            return Err(RetrieverError::DuplicateName { pool: self.dir.clone(), name: name.into() });
        }
        adapter
            .map(|a| {
                validate_adapter(a)?;
                std::fs::canonicalize(a).map_err(|e| RetrieverError::Adapter { path: a.into(), message: e.to_string() })
            })
            .transpose()
    }

    /// Adds a LoRA given its embedding. The name, adapter folder, embedding (dimension, finite,
    /// non-zero) and sample count are checked before anything is written; on error the pool is
    /// unchanged.
    pub fn add_embedding(&mut self, mut entry: PoolEntry) -> Result<(), RetrieverError> {
        entry.adapter = self.check_new(&entry.name, entry.adapter.as_deref())?;
        if entry.n_samples == 0 {
            return Err(RetrieverError::EmptySamples { path: PathBuf::from(format!("<samples of {}>", entry.name)) });
        }
        if !self.index.is_empty() && entry.embedding.len() != self.index.dim() {
            return Err(RetrieverError::Dimension {
                name: entry.name.clone(),
                expected: self.index.dim(),
                got: entry.embedding.len(),
            });
        }
        if entry.embedding.is_empty() || normalized(&entry.embedding).is_none() {
            return Err(RetrieverError::BadVector { name: entry.name.clone() });
        }
        let file = EntryFile {
            format: ENTRY_FORMAT.into(),
            name: entry.name.clone(),
            dim: entry.embedding.len(),
            n_samples: entry.n_samples,
            adapter: entry.adapter.clone(),
            instruction: entry.instruction.clone(),
            samples: entry.samples.clone(),
            embedding_f32le_hex: to_hex(&entry.embedding),
        };
        let json = serde_json::to_vec_pretty(&file).map_err(|e| RetrieverError::format(&self.dir, e.to_string()))?;
        let path = self.entry_path(&entry.name);
        create_atomic(&path, &json).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => {
                RetrieverError::DuplicateName { pool: self.dir.clone(), name: entry.name.clone() }
            }
            _ => RetrieverError::io(&path, e),
        })?;
        sync_dir(&self.dir.join("entries"))?;
        self.insert(entry)
    }

    /// Adds a LoRA from its samples: the mean of the embeddings of `instruction + sample` (the
    /// pool's [`Self::instruction`]), computed in batches of [`SAMPLE_BATCH`]. Name, adapter and
    /// samples are checked before the encoder runs.
    pub fn add<B: Backend>(
        &mut self,
        name: &str,
        adapter: Option<&Path>,
        samples: &[String],
        encoder: &SentenceEncoder<B>,
    ) -> Result<(), RetrieverError> {
        self.check_new(name, adapter)?;
        if samples.is_empty() {
            return Err(RetrieverError::EmptySamples { path: PathBuf::from(format!("<samples of {name}>")) });
        }
        let texts: Vec<String> = samples.iter().map(|s| format!("{}{s}", self.instruction)).collect();
        let embeddings = encoder.embed(&texts, SAMPLE_BATCH)?;
        let mut mean = vec![0f32; encoder.dim()];
        for e in &embeddings {
            for (m, v) in mean.iter_mut().zip(e) {
                *m += v / samples.len() as f32;
            }
        }
        self.add_embedding(PoolEntry {
            name: name.into(),
            embedding: mean,
            n_samples: samples.len(),
            adapter: adapter.map(Path::to_path_buf),
            instruction: self.instruction.clone(),
            samples: samples.to_vec(),
        })
    }

    /// Removes a LoRA (its file, then its index row). O(dim) in memory.
    pub fn remove(&mut self, name: &str) -> Result<(), RetrieverError> {
        validate_name(name)?;
        if !self.entries.contains_key(name) {
            return Err(RetrieverError::UnknownName { pool: self.dir.clone(), name: name.into() });
        }
        let path = self.entry_path(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {} // removed by another writer
            Err(e) => return Err(RetrieverError::io(&path, e)),
        }
        sync_dir(&self.dir.join("entries"))?;
        self.index.remove(name)?;
        self.entries.remove(name);
        Ok(())
    }

    fn entry_path(&self, name: &str) -> PathBuf {
        self.dir.join("entries").join(format!("{name}.json"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_bits() {
        let v = vec![0.1f32, -3.5e-20, f32::MAX, 1.0 / 3.0];
        assert_eq!(from_hex(&to_hex(&v)), Some(v));
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("zz000000"), None);
    }

    #[test]
    fn names_are_checked() {
        for bad in ["", "../x", "a/b", "a\\b", ".hidden", "sp ace", &"n".repeat(MAX_NAME_LEN + 1), "é"] {
            assert!(matches!(validate_name(bad), Err(RetrieverError::InvalidName { .. })), "{bad:?} accepted");
        }
        for good in ["a", "arithmetic.2_digit-addition", &"n".repeat(MAX_NAME_LEN)] {
            validate_name(good).expect("valid name");
        }
    }
}
