//! `ramole fetch`: download, verify and unpack the real assets, then print where they are.

use anyhow::Context;
use ramole_core::assets::{self, Asset, AssetCache};

/// Which asset to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    /// SmolLM2-135M-Instruct (Q4_1 GGUF).
    Smollm2,
    /// all-MiniLM-L6-v2 (the retriever's encoder).
    Minilm,
    /// The BIG-bench task data (source archive).
    Bigbench,
    /// All of them.
    All,
}

impl Which {
    fn assets(self) -> Vec<Asset> {
        match self {
            Self::Smollm2 => vec![assets::SMOLLM2],
            Self::Minilm => vec![assets::MINILM],
            Self::Bigbench => vec![assets::BIGBENCH],
            Self::All => assets::ALL.to_vec(),
        }
    }
}

/// Arguments of `ramole fetch`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The asset to fetch.
    #[arg(value_enum, default_value_t = Which::All)]
    pub which: Which,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Runs `ramole fetch`: prints `name<TAB>path` for each asset, once it is verified and in the cache
/// (`$RAMOLE_HOME`, else `~/.cache/ramole`).
pub fn run(args: Args) -> anyhow::Result<()> {
    let cache = AssetCache::from_env()?.quiet(args.quiet);
    for asset in args.which.assets() {
        let path = cache.path_of(&asset).with_context(|| format!("fetching `{}`", asset.name))?;
        println!("{}\t{}", asset.name, path.display());
    }
    Ok(())
}
