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
//! * **The encoder** that embedded the pool is recorded in `<pool>/pool.json`
//!   (`{"format", "encoder", "instruction", "entries"}`, written with
//!   [`ramole_core::fs::write_atomic`] by the first [`LoraPool::add`]): its
//!   [`SentenceEncoder::identity`]. Adding with, or querying with, an encoder of another identity is
//!   [`RetrieverError::EncoderMismatch`] ([`LoraPool::check_encoder`]). A pool made before
//!   `pool.json` existed has no recorded identity: any encoder is accepted, and the next add records
//!   its identity.
//! * **Re-embedding** ([`LoraPool::reembed`]) embeds every entry again from its stored samples into
//!   a fresh folder `<pool>/.entries-…` (fsynced), then switches to it by atomically replacing
//!   `pool.json`, whose `entries` names the pool's entries folder (`entries` when absent), and
//!   deletes the old folder. A crash at any point leaves either the old pool or the new one; a
//!   leftover folder is ignored by readers and deleted by the next re-embed. Writers that opened the
//!   pool before a re-embed are refused ([`LoraPool::add`] re-reads `pool.json`).
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
const POOL_FORMAT: &str = "ramole-pool/1";
/// The file in a pool folder that records its encoder and names its entries folder.
pub const POOL_FILE: &str = "pool.json";
/// The entries folder of a pool whose `pool.json` names none (or that has no `pool.json`).
pub const DEFAULT_ENTRIES: &str = "entries";
/// The prefix of the folders [`LoraPool::reembed`] writes.
const STAGED_PREFIX: &str = ".entries-";

/// The on-disk form of `pool.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PoolFile {
    format: String,
    /// The [`SentenceEncoder::identity`] of the encoder that embedded the entries.
    #[serde(default)]
    encoder: Option<String>,
    /// The instruction of the add that recorded the encoder.
    #[serde(default)]
    instruction: Option<String>,
    /// The entries folder, a plain name inside the pool folder.
    #[serde(default = "default_entries")]
    entries: String,
}

fn default_entries() -> String {
    DEFAULT_ENTRIES.into()
}

/// Reads `<dir>/pool.json`; `None` when it does not exist (a pool made before it existed, or not
/// yet given an entry).
fn read_pool_file(dir: &Path) -> Result<Option<PoolFile>, RetrieverError> {
    let path = dir.join(POOL_FILE);
    let text = match read_text(&path, MAX_TEXT_BYTES) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(RetrieverError::io(&path, e)),
    };
    let file: PoolFile = serde_json::from_str(&text)
        .map_err(|e| RetrieverError::format(&path, format!("not a pool description: {e}")))?;
    if file.format != POOL_FORMAT {
        return Err(RetrieverError::format(&path, format!("format `{}` is not `{POOL_FORMAT}`", file.format)));
    }
    let plain = !file.entries.is_empty()
        && !file.entries.contains(['/', '\\', '\0'])
        && matches!(Path::new(&file.entries).components().collect::<Vec<_>>()[..], [std::path::Component::Normal(_)]);
    if !plain {
        return Err(RetrieverError::format(&path, format!("`entries` {:?} is not a folder name", file.entries)));
    }
    Ok(Some(file))
}

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

/// The mean of the embeddings of `instruction + sample`, computed in batches of [`SAMPLE_BATCH`]: a LoRA's
/// embedding in the pool ([`LoraPool::add`] computes it so; a server computes it off its engine's thread and
/// registers it with [`LoraPool::add_embedding`]).
pub fn mean_embedding<B: Backend>(
    encoder: &SentenceEncoder<B>,
    instruction: &str,
    samples: &[String],
) -> Result<Vec<f32>, RetrieverError> {
    let texts: Vec<String> = samples.iter().map(|s| format!("{instruction}{s}")).collect();
    let embeddings = encoder.embed(&texts, SAMPLE_BATCH)?;
    let mut mean = vec![0f32; encoder.dim()];
    for e in &embeddings {
        for (m, v) in mean.iter_mut().zip(e) {
            *m += v / samples.len() as f32;
        }
    }
    Ok(mean)
}

/// The bytes of an entry's file.
fn entry_bytes(entry: &PoolEntry) -> Result<Vec<u8>, serde_json::Error> {
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
    serde_json::to_vec_pretty(&file)
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
    /// The entries folder (a name inside `dir`).
    entries_name: String,
    /// The identity of the encoder that embedded the pool, if recorded.
    encoder: Option<String>,
}

impl LoraPool {
    /// Opens the pool in `dir` for reading and loads every entry; creates nothing. A pool that does
    /// not exist (no entries folder: `dir/entries/`, or the one `dir/pool.json` names) is
    /// [`RetrieverError::NoPool`]; an unreadable or invalid `pool.json` is an error. An entry that cannot be
    /// used is skipped and returned, with the reason, next to the pool (see the module docs); the
    /// embedding dimension of the pool is that of most entries (on a tie, of the first by file name).
    pub fn open(dir: impl AsRef<Path>) -> Result<(Self, Vec<SkippedEntry>), RetrieverError> {
        let dir = dir.as_ref().to_path_buf();
        let pool_file = read_pool_file(&dir)?;
        let entries_name = pool_file.as_ref().map_or_else(default_entries, |f| f.entries.clone());
        let entries_dir = dir.join(&entries_name);
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
        let (encoder, instruction) = match pool_file {
            Some(f) => (f.encoder, f.instruction.unwrap_or_else(|| DEFAULT_INSTRUCTION.into())),
            None => (None, DEFAULT_INSTRUCTION.into()),
        };
        let mut pool =
            Self { dir, entries: HashMap::new(), index: Index::new(dim), instruction, entries_name, encoder };
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
    /// adding a LoRA does). A pool whose `pool.json` names its entries folder is only opened.
    pub fn create(dir: impl AsRef<Path>) -> Result<(Self, Vec<SkippedEntry>), RetrieverError> {
        if read_pool_file(dir.as_ref())?.is_none() {
            let entries_dir = dir.as_ref().join(DEFAULT_ENTRIES);
            std::fs::create_dir_all(&entries_dir).map_err(|e| RetrieverError::io(&entries_dir, e))?;
        }
        Self::open(dir)
    }

    /// The identity of the encoder that embedded the pool ([`SentenceEncoder::identity`]), as
    /// `pool.json` records it; `None` for a pool that has not recorded one (made before encoder
    /// identities were recorded, or never added to with an encoder).
    pub fn encoder_identity(&self) -> Option<&str> {
        self.encoder.as_deref()
    }

    /// The folder holding the entry files (`<pool>/entries` unless the pool was re-embedded).
    pub fn entries_dir(&self) -> PathBuf {
        self.dir.join(&self.entries_name)
    }

    /// Checks that `encoder` may embed queries for, or entries of, this pool: it is not an encoder
    /// changed in memory ([`RetrieverError::UnsavedEncoder`]) and its identity is the one the pool
    /// records, if any ([`RetrieverError::EncoderMismatch`]).
    pub fn check_encoder<B: Backend>(&self, encoder: &SentenceEncoder<B>) -> Result<(), RetrieverError> {
        if encoder.is_unsaved() {
            return Err(RetrieverError::UnsavedEncoder { pool: self.dir.clone() });
        }
        match &self.encoder {
            Some(recorded) if recorded != encoder.identity() => Err(RetrieverError::EncoderMismatch {
                pool: self.dir.clone(),
                recorded: recorded.clone(),
                given: encoder.identity().into(),
            }),
            _ => Ok(()),
        }
    }

    /// Writes `pool.json` atomically.
    fn write_pool_file(&self, file: &PoolFile) -> Result<(), RetrieverError> {
        let path = self.dir.join(POOL_FILE);
        let json = serde_json::to_vec_pretty(file).map_err(|e| RetrieverError::format(&path, e.to_string()))?;
        ramole_core::fs::write_atomic(&path, &json).map_err(|e| RetrieverError::io(&path, e))
    }

    /// Brings the recorded encoder up to date with `pool.json` (another writer may have recorded one);
    /// a pool re-embedded since it was opened is an error (its entries live in another folder now).
    fn refresh_pool_file(&mut self) -> Result<(), RetrieverError> {
        if let Some(file) = read_pool_file(&self.dir)? {
            if file.entries != self.entries_name {
                return Err(RetrieverError::format(
                    self.dir.join(POOL_FILE),
                    "the pool was re-embedded since it was opened: open it again",
                ));
            }
            self.encoder = file.encoder;
        }
        Ok(())
    }

    /// Brings the in-memory pool up to date with its entries folder, as another process (`ramole pool add`,
    /// `pool remove`, another server on the same folder) changed it: an entry file that appeared is read and
    /// indexed (one that cannot be used is skipped, as [`Self::open`] skips it), an entry whose file is gone is
    /// dropped; the index is updated in place, not rebuilt. Returns the names added and removed. A pool
    /// re-embedded meanwhile (`pool.json` naming another entries folder) needs [`Self::open`] again.
    pub fn refresh(&mut self) -> Result<(Vec<String>, Vec<String>), RetrieverError> {
        let dir = self.entries_dir();
        let on_disk: std::collections::BTreeSet<String> = std::fs::read_dir(&dir)
            .map_err(|e| RetrieverError::io(&dir, e))?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                (!n.starts_with('.')).then_some(n)?.strip_suffix(".json").map(str::to_owned)
            })
            .collect();
        let removed: Vec<String> = self.entries.keys().filter(|n| !on_disk.contains(*n)).cloned().collect();
        for name in &removed {
            self.index.remove(name)?;
            self.entries.remove(name);
        }
        let mut added = Vec::new();
        let new: Vec<&String> = on_disk.iter().filter(|n| !self.entries.contains_key(*n)).collect();
        for name in new {
            let path = self.entry_path(name);
            let Ok(bytes) = read_bounded(&path, MAX_ENTRY_BYTES) else { continue };
            let Ok(entry) = PoolEntry::from_json(&path, &bytes) else { continue };
            if entry.name != *name || (!self.index.is_empty() && entry.embedding.len() != self.index.dim()) {
                continue;
            }
            if self.insert(entry).is_ok() {
                added.push(name.clone());
            }
        }
        Ok((added, removed))
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
        let json = entry_bytes(&entry).map_err(|e| RetrieverError::format(&self.dir, e.to_string()))?;
        let path = self.entry_path(&entry.name);
        create_atomic(&path, &json).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => {
                RetrieverError::DuplicateName { pool: self.dir.clone(), name: entry.name.clone() }
            }
            _ => RetrieverError::io(&path, e),
        })?;
        sync_dir(&self.entries_dir())?;
        self.insert(entry)
    }

    /// Adds a LoRA from its samples: the mean of the embeddings of `instruction + sample` (the
    /// pool's [`Self::instruction`]), computed in batches of [`SAMPLE_BATCH`]. Name, adapter,
    /// samples and encoder ([`Self::check_encoder`], against what `pool.json` records now) are
    /// checked before the encoder runs. The first add with an encoder records its identity in
    /// `pool.json`.
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
        self.refresh_pool_file()?;
        self.check_encoder(encoder)?;
        let mean = mean_embedding(encoder, &self.instruction, samples)?;
        self.add_embedding(PoolEntry {
            name: name.into(),
            embedding: mean,
            n_samples: samples.len(),
            adapter: adapter.map(Path::to_path_buf),
            instruction: self.instruction.clone(),
            samples: samples.to_vec(),
        })?;
        if self.encoder.is_none() {
            self.write_pool_file(&PoolFile {
                format: POOL_FORMAT.into(),
                encoder: Some(encoder.identity().into()),
                instruction: Some(self.instruction.clone()),
                entries: self.entries_name.clone(),
            })?;
            self.encoder = Some(encoder.identity().into());
        }
        Ok(())
    }

    /// Re-embeds every entry from its stored samples (each with its own instruction) with
    /// `encoder`, and records the encoder's identity; returns how many entries were re-embedded.
    ///
    /// Refused before anything is written when the encoder was changed in memory, when an entry
    /// has no stored samples, or when an entry file of the pool cannot be read (it would be lost):
    /// [`RetrieverError::UnsavedEncoder`], [`RetrieverError::NotReembeddable`]. Atomic: the new
    /// entries are written to a fresh folder ([`Self::stage_reembed`]), then `pool.json` is replaced
    /// to name it, then the old folder is deleted; a crash leaves the old pool or the new one. Not
    /// to be run while another process adds to or removes from the pool (its change could be lost).
    pub fn reembed<B: Backend>(&mut self, encoder: &SentenceEncoder<B>) -> Result<usize, RetrieverError> {
        // The entries folder on disk now (another process may have re-embedded since this one opened).
        let old = self.dir.join(read_pool_file(&self.dir)?.map_or_else(default_entries, |f| f.entries));
        let staged = self.stage_reembed(encoder)?;
        let name = staged.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let switched = self.write_pool_file(&PoolFile {
            format: POOL_FORMAT.into(),
            encoder: Some(encoder.identity().into()),
            instruction: Some(self.instruction.clone()),
            entries: name,
        });
        if let Err(e) = switched {
            let _ = std::fs::remove_dir_all(&staged);
            return Err(e);
        }
        // The new pool is in place; the old folder is garbage (a failure here leaves it ignored).
        let _ = std::fs::remove_dir_all(&old);
        let _ = sync_dir(&self.dir);
        let instruction = self.instruction.clone();
        let (pool, _) = Self::open(&self.dir)?;
        *self = pool;
        self.instruction = instruction;
        Ok(self.len())
    }

    /// The first step of [`Self::reembed`], which only it and tests need: checks the pool and the
    /// encoder, deletes folders left by an earlier interrupted re-embed, computes the new entries
    /// and writes them (fsynced) to a fresh folder `<pool>/.entries-…`, whose path is returned. The
    /// pool itself is unchanged: readers still see the old entries folder.
    #[doc(hidden)]
    pub fn stage_reembed<B: Backend>(&self, encoder: &SentenceEncoder<B>) -> Result<PathBuf, RetrieverError> {
        if encoder.is_unsaved() {
            return Err(RetrieverError::UnsavedEncoder { pool: self.dir.clone() });
        }
        let refuse = |reason: String| RetrieverError::NotReembeddable { pool: self.dir.clone(), reason };
        // What is on disk now, not what was loaded when the pool was opened.
        let (current, skipped) = Self::open(&self.dir)?;
        if !skipped.is_empty() {
            let names: Vec<&str> = skipped.iter().map(|s| s.name.as_str()).collect();
            return Err(refuse(format!(
                "entry files that cannot be read would be lost: {} (`ramole pool remove NAME` deletes them)",
                names.join(", ")
            )));
        }
        let entries = current.entries();
        let without: Vec<&str> = entries.iter().filter(|e| e.samples.is_empty()).map(|e| e.name.as_str()).collect();
        if !without.is_empty() {
            return Err(refuse(format!(
                "entries without stored samples: {} (remove them and add them again from their samples)",
                without.join(", ")
            )));
        }
        let mut new_entries = Vec::with_capacity(entries.len());
        for e in &entries {
            let embedding = mean_embedding(encoder, &e.instruction, &e.samples)?;
            if normalized(&embedding).is_none() {
                return Err(RetrieverError::BadVector { name: e.name.clone() });
            }
            new_entries.push(PoolEntry { embedding, ..(*e).clone() });
        }
        // Folders of an interrupted re-embed are not the pool's: delete them.
        if let Ok(list) = std::fs::read_dir(&self.dir) {
            for item in list.filter_map(Result::ok) {
                let n = item.file_name().to_string_lossy().into_owned();
                if n.starts_with(STAGED_PREFIX) && n != current.entries_name {
                    let _ = std::fs::remove_dir_all(item.path());
                }
            }
        }
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let staged = self.dir.join(format!("{STAGED_PREFIX}{}-{n}-{nanos:x}", std::process::id()));
        std::fs::create_dir(&staged).map_err(|e| RetrieverError::io(&staged, e))?;
        let written = (|| {
            for entry in &new_entries {
                let path = staged.join(format!("{}.json", entry.name));
                let bytes = entry_bytes(entry).map_err(|e| RetrieverError::format(&path, e.to_string()))?;
                write_temp(&path, &bytes).map_err(|e| RetrieverError::io(&path, e))?;
            }
            sync_dir(&staged)?;
            sync_dir(&self.dir)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&staged);
            return Err(e);
        }
        Ok(staged)
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
        sync_dir(&self.entries_dir())?;
        if loaded {
            self.index.remove(name)?;
            self.entries.remove(name);
        }
        Ok(())
    }

    fn entry_path(&self, name: &str) -> PathBuf {
        self.entries_dir().join(format!("{name}.json"))
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
