//! Files that users hand us and files we write for them.
//!
//! * **Reading**: [`read_bounded`] and [`read_text`] accept only regular files (a FIFO, a device
//!   such as `/dev/zero` behind a link, a socket or a folder is refused before it is opened, so a
//!   read can neither hang nor grow without bound) and refuse a file larger than the caller's cap
//!   before reading it. [`open_regular`] does the same for readers that seek (GGUF).
//! * **Writing**: [`write_atomic`] writes a unique temporary file in the target's folder, fsyncs
//!   it and renames it into place, so a reader sees the old file or the whole new one and no
//!   temporary file survives an error. An existing symlink is written through (its target is
//!   replaced, the link stays); a target that exists but is not a regular file is refused.
//!   [`refuse_overwriting_inputs`] refuses an output that is one of the command's inputs.
//!
//! Errors are [`std::io::Error`]s (kind `InvalidInput` for a file of the wrong type or size) so that
//! each crate wraps them with the path in its own error type.

use std::fs::{File, Metadata};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// The default cap for small text inputs (configs, request files, JSONL samples, pool entries).
pub const MAX_TEXT_BYTES: u64 = 256 << 20;

/// What kind of file system object `meta` describes, for messages.
fn kind_of(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        return "a folder";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    "not a regular file"
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// The metadata of `path` (links followed) if it is a regular file; an `InvalidInput` error
/// naming what it is otherwise. Nothing is opened.
pub fn regular_metadata(path: &Path) -> io::Result<Metadata> {
    let meta = std::fs::metadata(path)?;
    if meta.is_file() { Ok(meta) } else { Err(invalid(format!("is {}, not a regular file", kind_of(&meta)))) }
}

/// Opens `path` for reading if it is a regular file (checked before opening, so a FIFO never
/// blocks), and returns it with its size.
pub fn open_regular(path: &Path) -> io::Result<(File, u64)> {
    regular_metadata(path)?;
    let file = File::open(path)?;
    // The object may have been swapped between the check and the open: check what was opened.
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(invalid(format!("is {}, not a regular file", kind_of(&meta))));
    }
    Ok((file, meta.len()))
}

/// Reads a regular file of at most `max` bytes whole.
pub fn read_bounded(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let (file, len) = open_regular(path)?;
    if len > max {
        return Err(invalid(format!("is {len} bytes, more than the {max} bytes allowed for this kind of file")));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // `take` guards against a file that grows while it is read.
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(invalid(format!("grew past the {max} bytes allowed while it was read")));
    }
    Ok(bytes)
}

/// Reads a regular UTF-8 text file of at most `max` bytes; a leading byte-order mark is dropped.
pub fn read_text(path: &Path, max: u64) -> io::Result<String> {
    let bytes = read_bounded(path, max)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        io::Error::new(io::ErrorKind::InvalidData, format!("is not UTF-8 text (byte {})", e.utf8_error().valid_up_to()))
    })?;
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

/// Where writing `path` must put the bytes: the final target of a symlink chain (so the link is
/// written through), or `path` itself. A target that exists but is not a regular file is refused.
pub fn output_target(path: &Path) -> io::Result<PathBuf> {
    let mut target = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&target) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let link = std::fs::read_link(&target)?;
                target = match target.parent() {
                    Some(parent) if link.is_relative() => parent.join(link),
                    _ => link,
                };
            }
            Ok(meta) if meta.is_file() => return Ok(target),
            Ok(meta) => {
                return Err(invalid(format!("is {}, not a regular file: refusing to write it", kind_of(&meta))));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(target),
            Err(e) => return Err(e),
        }
    }
    Err(invalid("has too many levels of symbolic links".into()))
}

/// Writes `bytes` to `path` atomically: a unique temporary file in the target's folder, fsync,
/// rename into place, fsync of the folder. A symlink at `path` is written through. On error the
/// temporary file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// [`write_atomic`] with a writer callback, for outputs produced piece by piece.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
    let target = output_target(path)?;
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // A leading dot keeps readers of folders (the pool) away from files in progress.
    let prefix = format!(".{name}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    // A new file gets the usual mode (0666 less the umask), not the temporary file's 0600.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut tmp = builder.tempfile_in(&dir)?;
    {
        let mut w = io::BufWriter::new(tmp.as_file_mut());
        write(&mut w)?;
        w.flush()?;
    }
    tmp.as_file().sync_all()?;
    // Keep the permissions of a file being replaced.
    if let Ok(meta) = std::fs::metadata(&target) {
        let _ = tmp.as_file().set_permissions(meta.permissions());
    }
    tmp.persist(&target).map_err(|e| e.error)?;
    // Make the rename durable; a folder that cannot be opened for fsync is not an error.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes `files` (name, bytes) into the folder `dir`, whole or not at all: everything goes into a fresh
/// sibling folder (each file synced) that is renamed into place. An existing `dir` is refused unless
/// `overwrite`; then the old folder is moved aside first and removed once the new one is in place (a failed
/// switch puts it back). `dir` is resolved first when it exists (`.` is the current folder under its own
/// name), and nothing of the attempt is left behind on any error. The error names the path at fault.
pub fn write_folder(dir: &Path, files: &[(&str, &[u8])], overwrite: bool) -> Result<(), (PathBuf, io::Error)> {
    let exists = std::fs::symlink_metadata(dir).is_ok();
    if exists && !overwrite {
        let e = io::Error::new(io::ErrorKind::AlreadyExists, "already exists (give --force to replace it)");
        return Err((dir.to_path_buf(), e));
    }
    let dir = if exists { std::fs::canonicalize(dir).map_err(|e| (dir.to_path_buf(), e))? } else { dir.to_path_buf() };
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| (parent.clone(), e))?;
    let name = dir.file_name().map_or_else(|| "folder".into(), |n| n.to_string_lossy().into_owned());
    let stage = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempdir_in(&parent)
        .map_err(|e| (parent.clone(), e))?;
    for (file, bytes) in files {
        let path = stage.path().join(file);
        write_atomic(&path, bytes).map_err(|e| (path, e))?;
    }
    // Publish: move an old folder aside, rename the new one in, drop the old one. Until the switch the
    // staging folder removes itself when dropped.
    let aside = exists.then(|| parent.join(format!(".{name}.old-{}", std::process::id())));
    if let Some(aside) = &aside {
        std::fs::rename(&dir, aside).map_err(|e| (dir.clone(), e))?;
    }
    if let Err(e) = std::fs::rename(stage.path(), &dir) {
        if let Some(aside) = &aside {
            let _ = std::fs::rename(aside, &dir); // put the old one back
        }
        return Err((dir, e));
    }
    let _ = stage.keep(); // renamed into place: nothing left to remove
    if let Some(aside) = aside {
        let _ = std::fs::remove_dir_all(aside);
    }
    Ok(())
}

/// Whether `a` and `b` name the same existing file (links followed).
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        #[cfg(unix)]
        (Ok(ma), Ok(mb)) => {
            use std::os::unix::fs::MetadataExt;
            ma.dev() == mb.dev() && ma.ino() == mb.ino()
        }
        #[cfg(not(unix))]
        (Ok(_), Ok(_)) => match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
            (Ok(ca), Ok(cb)) => ca == cb,
            _ => false,
        },
        _ => false,
    }
}

/// Refuses to write `output` when it is one of `inputs` (or a file inside an input folder, for
/// folder inputs such as an HF model). Returns the input it would overwrite in the error.
pub fn refuse_overwriting_inputs(output: &Path, inputs: &[&Path]) -> io::Result<()> {
    let target = output_target(output)?;
    for input in inputs {
        let hit = same_file(&target, input)
            || (input.is_dir()
                && std::fs::canonicalize(input)
                    .ok()
                    .zip(target.parent().and_then(|p| std::fs::canonicalize(p).ok()))
                    .is_some_and(|(i, p)| p.starts_with(i)));
        if hit {
            return Err(invalid(format!(
                "is an input of this command ({}): refusing to overwrite it",
                input.display()
            )));
        }
    }
    Ok(())
}

/// Refuses to write (or replace) the folder `output` when one of `inputs` is that folder or lies
/// inside it.
pub fn refuse_folder_over_inputs(output: &Path, inputs: &[&Path]) -> io::Result<()> {
    let Ok(out) = std::fs::canonicalize(output) else { return Ok(()) }; // does not exist yet
    for input in inputs {
        if std::fs::canonicalize(input).is_ok_and(|i| i.starts_with(&out)) {
            return Err(invalid(format!(
                "holds an input of this command ({}): refusing to replace it",
                input.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_regular_files_within_the_cap_and_drops_a_bom() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.txt");
        std::fs::write(&p, "\u{feff}hello").expect("write");
        assert_eq!(read_text(&p, 100).expect("read"), "hello");
        let err = read_text(&p, 3).expect_err("too big");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("more than the 3 bytes"), "{err}");
        std::fs::write(&p, [0xff, 0xfe, 0x00]).expect("write");
        assert!(read_text(&p, 100).expect_err("not utf-8").to_string().contains("UTF-8"));
        let err = read_bounded(dir.path(), 100).expect_err("a folder");
        assert!(err.to_string().contains("a folder"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn refuses_devices_and_fifos_without_blocking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let link = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &link).expect("symlink");
        let err = read_bounded(&link, 1 << 30).expect_err("device");
        assert!(err.to_string().contains("character device"), "{err}");
        let fifo = dir.path().join("fifo");
        let status = std::process::Command::new("mkfifo").arg(&fifo).status();
        if status.is_ok_and(|s| s.success()) {
            let err = read_text(&fifo, 100).expect_err("fifo");
            assert!(err.to_string().contains("FIFO"), "{err}");
            assert!(write_atomic(&fifo, b"x").is_err());
        }
        assert!(write_atomic(&link, b"x").expect_err("device").to_string().contains("refusing"));
    }

    #[cfg(unix)]
    #[test]
    fn writes_atomically_through_symlinks_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("real.bin");
        std::fs::write(&real, b"old").expect("write");
        let link = dir.path().join("link.bin");
        std::os::unix::fs::symlink("real.bin", &link).expect("symlink");
        write_atomic(&link, b"new").expect("write through");
        let fresh = dir.path().join("fresh.bin");
        write_atomic(&fresh, b"x").expect("write");
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&fresh).expect("meta").permissions().mode() & 0o777;
            assert_ne!(mode & 0o044, 0, "a new output is readable by others (mode {mode:o}), as File::create makes it");
            std::fs::remove_file(&fresh).expect("rm");
        }
        assert!(std::fs::symlink_metadata(&link).expect("meta").file_type().is_symlink());
        assert_eq!(std::fs::read(&real).expect("read"), b"new");
        // A failing writer leaves the old content and no temporary file.
        let err = write_atomic_with(&real, |w| {
            w.write_all(b"partial")?;
            Err(io::Error::other("boom"))
        })
        .expect_err("fails");
        assert_eq!(err.to_string(), "boom");
        assert_eq!(std::fs::read(&real).expect("read"), b"new");
        let names: Vec<_> = std::fs::read_dir(dir.path()).expect("ls").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn refuses_an_output_that_is_an_input() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = dir.path().join("in.json");
        std::fs::write(&input, "{}").expect("write");
        let model = dir.path().join("model");
        std::fs::create_dir(&model).expect("mkdir");
        assert!(refuse_overwriting_inputs(&input, &[&input]).is_err());
        assert!(refuse_overwriting_inputs(&model.join("model.safetensors"), &[&input, &model]).is_err());
        assert!(refuse_overwriting_inputs(&dir.path().join("out.bin"), &[&input, &model]).is_ok());
        std::fs::write(model.join("model.safetensors"), b"x").expect("write");
        assert!(refuse_folder_over_inputs(&model, &[&model.join("model.safetensors")]).is_err());
        assert!(refuse_folder_over_inputs(dir.path(), &[&input]).is_err());
        assert!(refuse_folder_over_inputs(&dir.path().join("new"), &[&input]).is_ok());
        assert!(refuse_folder_over_inputs(&model, &[&input]).is_ok());
    }
}
