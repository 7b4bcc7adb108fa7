//! The LoRA pool: one JSON file per LoRA in `<pool>/entries/`, loaded into an [`Index`].
//!
//! * **Add** writes `entries/.<name>.json.tmp-…` (fsync), then hard-links it to
//!   `entries/<name>.json` (which fails if the name exists, so two writers cannot both add the
//!   same name), removes the temporary name and fsyncs the folder. Cost: the LoRA's own samples.
//! * **Remove** unlinks `entries/<name>.json` and fsyncs the folder. Cost: O(dim) in memory.
//! * **Readers** list `entries/` and read only `*.json` names that do not start with a dot, so a
//!   file being written is never seen, and a crash mid-write leaves only an ignored temporary file
//!   next to the previous, intact entries.
//! * **Opening** ([`LoraPool::open`]) reads a pool that exists and creates nothing: a missing folder is
//!   [`RetrieverError::NoPool`]. Only [`LoraPool::create`] (what `pool add` uses) creates the folders.
//! * **A bad entry** (unreadable, not a regular file, not a valid entry, a name that differs from its
//!   file name, an embedding that is not finite or whose dimension differs from the pool's) is skipped
//!   and returned as a [`SkippedEntry`] next to the pool, so one bad file never takes the whole pool
//!   down; [`LoraPool::remove`] deletes it by name. Entry files are read through
//!   [`ramole_core::fs::read_text`] (regular files only, at most [`MAX_ENTRY_BYTES`]), so a FIFO or a
//!   link to a device in `entries/` can neither block nor exhaust memory.
//!
//! Names are safe file names: 1 to 128 bytes of ASCII letters, digits, `-`, `_`, `.`, not starting
//! with a dot.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use burn::tensor::backend::Backend;
use ramole_core::fs::{MAX_TEXT_BYTES, read_bounded, read_text};
use serde::{Deserialize, Serialize};

use crate::RetrieverError;
use crate::encoder::{DEFAULT_INSTRUCTION, SentenceEncoder};
use crate::index::{Index, normalized};

/// The longest LoRA name, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// The texts embedded per forward pass when a LoRA's samples are embedded.
pub const SAMPLE_BATCH: usize = 32;
/// The largest entry file read (an entry holds its samples).
pub const MAX_ENTRY_BYTES: u64 = MAX_TEXT_BYTES;
/// The largest embedding dimension an entry may declare.
pub const MAX_DIM: usize = 1 << 16;
/// The largest `adapter_model.safetensors` [`validate_adapter`] reads.
pub const MAX_ADAPTER_BYTES: u64 = 4 << 30;
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
    /// The PEFT adapter folder, if the LoRA has one: relative to the pool folder when it lies inside
    /// it (see [`LoraPool::adapter_dir`]), absolute otherwise.
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

    /// Parses the bytes of an entry file found at `path` (whose file name, without `.json`, must be
    /// the entry's name). Everything a pool entry must satisfy is checked: the format, the name (a
    /// valid name, equal to the file's), the embedding (`dim` finite f32 values, not all zero,
    /// `1 ≤ dim ≤` [`MAX_DIM`]) and `n_samples ≥ 1`. A leading UTF-8 byte-order mark is ignored.
    /// Errors are [`RetrieverError::Format`] naming `path`.
    pub fn from_json(path: &Path, bytes: &[u8]) -> Result<Self, RetrieverError> {
        let bad = |message: String| RetrieverError::format(path, message);
        let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
        let file: EntryFile = serde_json::from_slice(bytes).map_err(|e| bad(format!("not a pool entry: {e}")))?;
        if file.format != ENTRY_FORMAT {
            return Err(bad(format!("format `{}` is not `{ENTRY_FORMAT}`", file.format)));
        }
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        if file.name != stem {
            return Err(bad(format!("the entry is named `{}` but its file is named `{stem}.json`", file.name)));
        }
        validate_name(&file.name).map_err(|e| bad(e.to_string()))?;
        if file.dim == 0 || file.dim > MAX_DIM {
            return Err(bad(format!("dim {} is not in 1..={MAX_DIM}", file.dim)));
        }
        if file.embedding_f32le_hex.len() != file.dim * 8 {
            return Err(bad(format!(
                "embedding has {} hex digits, {} dimensions need {}",
                file.embedding_f32le_hex.len(),
                file.dim,
                file.dim * 8
            )));
        }
        let embedding = from_hex(&file.embedding_f32le_hex)
            .ok_or_else(|| bad(format!("embedding is not {} hex-encoded f32", file.dim)))?;
        if let Some(i) = embedding.iter().position(|x| !x.is_finite()) {
            return Err(bad(format!("embedding value {i} is {} (not finite)", embedding[i])));
        }
        if normalized(&embedding).is_none() {
            return Err(bad("embedding is zero".into()));
        }
        if file.n_samples == 0 {
            return Err(bad("n_samples is 0 (a LoRA needs at least one sample)".into()));
        }
        Ok(PoolEntry {
            name: file.name,
            embedding,
            n_samples: file.n_samples,
            adapter: file.adapter,
            instruction: file.instruction,
            samples: file.samples,
        })
    }
}

/// A file of `entries/` that [`LoraPool::open`] skipped, and why.
#[derive(Debug)]
pub struct SkippedEntry {
    /// The entry file.
    pub path: PathBuf,
    /// Its file name without `.json`: the name [`LoraPool::remove`] (`ramole pool remove`) takes to
    /// delete it.
    pub name: String,
    /// Why it was skipped (it names the file).
    pub error: RetrieverError,
}

impl std::fmt::Display for SkippedEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.error)
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
    let text = read_text(&config_path, MAX_TEXT_BYTES).map_err(|e| bad(format!("adapter_config.json: {e}")))?;
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
    let bytes =
        read_bounded(&weights_path, MAX_ADAPTER_BYTES).map_err(|e| bad(format!("adapter_model.safetensors: {e}")))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(format!("adapter_model.safetensors: not a valid safetensors file: {e}")))?;
    if st.is_empty() {
        return Err(bad("adapter_model.safetensors holds no tensor".into()));
    }
    Ok(())
}

/// Reads a JSONL file of texts: each non-blank line is a JSON string or an object with a string
/// `input`. An empty file is an error. The file is read with [`ramole_core::fs::read_text`]: a
/// regular file of at most [`MAX_TEXT_BYTES`] (a FIFO or a device is refused without blocking), a
/// leading UTF-8 byte-order mark dropped. Errors name the file and, for a bad line, its number.
pub fn read_jsonl_texts(path: &Path) -> Result<Vec<String>, RetrieverError> {
    let text = read_text(path, MAX_TEXT_BYTES).map_err(|e| RetrieverError::io(path, e))?;
    parse_jsonl_texts(path, &text)
}

/// [`read_jsonl_texts`] on text already read; `path` names the source in errors.
pub fn parse_jsonl_texts(path: &Path, text: &str) -> Result<Vec<String>, RetrieverError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
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

/// Creates `path` atomically with `bytes`, failing with `AlreadyExists` if it exists (unlike
/// [`ramole_core::fs::write_atomic`], which replaces: two writers adding the same name must not both
/// succeed).
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
    /// Opens the pool in `dir` for reading and loads every entry; creates nothing. A pool that does
    /// not exist (no `dir/entries/` folder) is [`RetrieverError::NoPool`]. An entry that cannot be
    /// used is skipped and returned, with the reason, next to the pool (see the module docs); the
    /// embedding dimension of the pool is that of most entries (on a tie, of the first by file name).
    pub fn open(dir: impl AsRef<Path>) -> Result<(Self, Vec<SkippedEntry>), RetrieverError> {
        let dir = dir.as_ref().to_path_buf();
        let entries_dir = dir.join("entries");
        match std::fs::metadata(&entries_dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(RetrieverError::format(&entries_dir, "is not a folder: not a LoRA pool")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(RetrieverError::NoPool { dir }),
            Err(e) => return Err(RetrieverError::io(&entries_dir, e)),
        }
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
        let mut skipped = Vec::new();
        let mut parsed = Vec::new();
        for path in files {
            let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let entry = match read_bounded(&path, MAX_ENTRY_BYTES) {
                Ok(bytes) => PoolEntry::from_json(&path, &bytes),
                // An entry removed between the listing and the read is simply gone.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => Err(RetrieverError::io(&path, e)),
            };
            match entry {
                Ok(entry) => parsed.push((path, name, entry)),
                Err(error) => skipped.push(SkippedEntry { path, name, error }),
            }
        }
        // The pool's dimension: that of most entries, so one odd entry cannot hide all the others.
        let mut counts: Vec<(usize, usize)> = Vec::new();
        for (_, _, e) in &parsed {
            match counts.iter_mut().find(|(d, _)| *d == e.embedding.len()) {
                Some((_, n)) => *n += 1,
                None => counts.push((e.embedding.len(), 1)),
            }
        }
        let best = counts.iter().map(|(_, n)| *n).max().unwrap_or(0);
        let dim = counts.iter().find(|(_, n)| *n == best).map_or(0, |(d, _)| *d);
        let mut pool =
            Self { dir, entries: HashMap::new(), index: Index::new(dim), instruction: DEFAULT_INSTRUCTION.into() };
        for (path, name, entry) in parsed {
            if entry.embedding.len() != dim {
                let message =
                    format!("embedding has {} dimensions, the pool's other entries have {dim}", entry.embedding.len());
                skipped.push(SkippedEntry { error: RetrieverError::format(&path, message), path, name });
                continue;
            }
            if let Err(e) = pool.insert(entry) {
                skipped.push(SkippedEntry { error: RetrieverError::format(&path, e.to_string()), path, name });
            }
        }
        skipped.sort_by(|a, b| a.path.cmp(&b.path));
        Ok((pool, skipped))
    }

    /// Opens the pool in `dir` like [`Self::open`], creating the folders first if absent (what
    /// adding a LoRA does).
    pub fn create(dir: impl AsRef<Path>) -> Result<(Self, Vec<SkippedEntry>), RetrieverError> {
        let entries_dir = dir.as_ref().join("entries");
        std::fs::create_dir_all(&entries_dir).map_err(|e| RetrieverError::io(&entries_dir, e))?;
        Self::open(dir)
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
                let abs = std::fs::canonicalize(a)
                    .map_err(|e| RetrieverError::Adapter { path: a.into(), message: e.to_string() })?;
                // An adapter inside the pool folder is stored relative to it, so that the pool can be
                // moved or shipped whole (the zoo); any other is stored as an absolute path.
                let inside = std::fs::canonicalize(&self.dir)
                    .ok()
                    .and_then(|dir| abs.strip_prefix(dir).ok().map(Path::to_path_buf));
                Ok(inside.unwrap_or(abs))
            })
            .transpose()
    }

    /// The adapter folder of an entry, with a path relative to the pool resolved against it.
    pub fn adapter_dir(&self, entry: &PoolEntry) -> Option<PathBuf> {
        entry.adapter.as_ref().map(|a| if a.is_relative() { self.dir.join(a) } else { a.clone() })
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
    ///
    /// An entry file that the pool skipped (see [`SkippedEntry`]) or that another writer added
    /// since the pool was opened is removed too: whatever `entries/<name>.json` is, it is unlinked
    /// without being read. Such a file's name only has to be a plain file name (no path separator,
    /// not starting with a dot), so that a file put there by hand under an invalid name can go too.
    pub fn remove(&mut self, name: &str) -> Result<(), RetrieverError> {
        let valid = validate_name(name);
        let loaded = self.entries.contains_key(name);
        if !loaded {
            let plain = !name.is_empty()
                && !name.starts_with('.')
                && !name.contains(['/', '\\', '\0'])
                && std::path::Path::new(name).components().count() == 1;
            let on_disk = plain && std::fs::symlink_metadata(self.entry_path(name)).is_ok();
            if !on_disk {
                valid?;
                return Err(RetrieverError::UnknownName { pool: self.dir.clone(), name: name.into() });
            }
        } else {
            valid?;
        }
        let path = self.entry_path(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {} // removed by another writer
            Err(e) => return Err(RetrieverError::io(&path, e)),
        }
        sync_dir(&self.dir.join("entries"))?;
        if loaded {
            self.index.remove(name)?;
            self.entries.remove(name);
        }
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
