//! The verified marker: what every file of an asset looked like when it was verified, so that each
//! use can check the asset with `stat` calls alone, and `--verify` can re-hash it.
//!
//! ```text
//! ramole-verified 2
//! asset <name> <sha256 of the download>
//! file <size in bytes> <mtime in ns since the epoch> <sha256 of the file> <path relative to the marker's folder>
//! file ...
//! ```
//!
//! The path comes last so that it may hold spaces; paths with control characters, `..` or a root are
//! refused both when unpacking and when parsing. Anything else (an older marker holding only the
//! archive's digest, a truncated marker) does not parse and the asset is treated as stale.

use std::fs::Metadata;
use std::path::{Component, Path, PathBuf};
use std::time::UNIX_EPOCH;

/// The first line of a marker of this format.
pub(crate) const HEADER: &str = "ramole-verified 2";

/// One verified file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Path relative to the folder the marker describes, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch (negative before it).
    pub mtime_ns: i128,
    /// sha256, lower-case hex.
    pub sha256: String,
}

/// A parsed marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Marker {
    /// The asset's short name.
    pub asset: String,
    /// The sha256 of the asset's download.
    pub sha256: String,
    /// Every file of the asset.
    pub files: Vec<Entry>,
}

impl Marker {
    /// The marker's text.
    pub fn render(&self) -> String {
        let mut out = format!("{HEADER}\nasset {} {}\n", self.asset, self.sha256);
        for f in &self.files {
            out.push_str(&format!("file {} {} {} {}\n", f.size, f.mtime_ns, f.sha256, f.path));
        }
        out
    }

    /// Parses a marker; the error says why it is not one of this format.
    pub fn parse(text: &str) -> Result<Marker, String> {
        let mut lines = text.lines();
        match lines.next() {
            Some(HEADER) => {}
            Some(first) if is_sha256(first.trim()) => {
                return Err("marker of an older format (the archive's digest only)".into());
            }
            _ => return Err(format!("marker does not start with `{HEADER}`")),
        }
        let (asset, sha256) = match lines.next().map(|l| l.split(' ').collect::<Vec<_>>()).as_deref() {
            Some(["asset", name, sha]) if !name.is_empty() && is_sha256(sha) => (name.to_string(), sha.to_string()),
            _ => return Err("marker lacks a valid `asset` line".into()),
        };
        let mut files = Vec::new();
        for (i, line) in lines.enumerate() {
            let bad = || format!("marker line {}: malformed `file` line", i + 3);
            let mut parts = line.splitn(5, ' ');
            if parts.next() != Some("file") {
                return Err(bad());
            }
            let size = parts.next().and_then(|s| s.parse::<u64>().ok()).ok_or_else(bad)?;
            let mtime_ns = parts.next().and_then(|s| s.parse::<i128>().ok()).ok_or_else(bad)?;
            let sha256 = parts.next().filter(|s| is_sha256(s)).ok_or_else(bad)?.to_string();
            let path = parts.next().filter(|p| safe_relative(p).is_some()).ok_or_else(bad)?.to_string();
            files.push(Entry { path, size, mtime_ns, sha256 });
        }
        if files.is_empty() {
            return Err("marker lists no file".into());
        }
        Ok(Marker { asset, sha256, files })
    }
}

/// Whether `s` is a lower-case hex sha256.
fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The modification time of `meta` in nanoseconds since the Unix epoch (0 where the platform has none).
pub(crate) fn mtime_ns(meta: &Metadata) -> i128 {
    match meta.modified() {
        Ok(t) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i128,
            Err(e) => -(e.duration().as_nanos() as i128),
        },
        Err(_) => 0,
    }
}

/// `rel` as a relative path of normal components only (no `..`, no root, no control character), or
/// `None`.
pub(crate) fn safe_relative(rel: &str) -> Option<PathBuf> {
    let path = Path::new(rel);
    (!rel.is_empty()
        && !rel.chars().any(char::is_control)
        && path.components().all(|c| matches!(c, Component::Normal(_))))
    .then(|| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Marker {
        Marker {
            asset: "minilm".into(),
            sha256: "a".repeat(64),
            files: vec![
                Entry {
                    path: "config.json".into(),
                    size: 612,
                    mtime_ns: 1_700_000_000_123_456_789,
                    sha256: "b".repeat(64),
                },
                Entry { path: "1_Pooling/with space.json".into(), size: 0, mtime_ns: -5, sha256: "c".repeat(64) },
            ],
        }
    }

    #[test]
    fn round_trips_and_reads_as_documented() {
        let m = sample();
        let text = m.render();
        assert_eq!(Marker::parse(&text), Ok(m));
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("ramole-verified 2"));
        assert_eq!(lines.next(), Some(format!("asset minilm {}", "a".repeat(64)).as_str()));
        assert_eq!(lines.next(), Some(format!("file 612 1700000000123456789 {} config.json", "b".repeat(64)).as_str()));
    }

    #[test]
    fn refuses_old_truncated_and_unsafe_markers() {
        let old = format!("{}\n", "a".repeat(64));
        assert!(Marker::parse(&old).expect_err("old").contains("older format"));
        assert!(Marker::parse("").is_err());
        let text = sample().render();
        let header_only: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
        assert!(Marker::parse(&header_only).expect_err("no files").contains("no file"));
        // Cut inside the last line's digest.
        assert!(Marker::parse(&text[..text.len() - 80]).is_err());
        for path in ["../evil", "/etc/passwd", "a/../../b", ""] {
            let bad = text.replace("config.json", path);
            assert!(Marker::parse(&bad).is_err(), "{path:?} accepted");
        }
        assert!(Marker::parse(&text.replace(" 612 ", " -1 ")).is_err());
        assert!(Marker::parse(&text.replace(&"b".repeat(64), &"B".repeat(64))).is_err());
    }

    #[test]
    fn rejects_unsafe_member_paths() {
        assert!(safe_relative("a/b.txt").is_some());
        assert!(safe_relative("a b/c.txt").is_some());
        assert!(safe_relative("../evil").is_none());
        assert!(safe_relative("/etc/passwd").is_none());
        assert!(safe_relative("a/../../b").is_none());
        assert!(safe_relative("a\nfile 1 2").is_none());
        assert!(safe_relative("").is_none());
    }
}
