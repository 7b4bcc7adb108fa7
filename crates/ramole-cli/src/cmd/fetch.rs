//! `ramole fetch`: download, verify and unpack the real assets, then print where they are.

use anyhow::Context;
use ramole_assets::{self as assets, Asset, AssetCache, Verify};

/// Which asset to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    /// SmolLM2-135M-Instruct (Q4_1 GGUF).
    Smollm2,
    /// all-MiniLM-L6-v2 (the retriever's encoder).
    Minilm,
    /// All of them.
    All,
}

impl Which {
    fn assets(self) -> Vec<Asset> {
        match self {
            Self::Smollm2 => vec![assets::SMOLLM2],
            Self::Minilm => vec![assets::MINILM],
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
    /// Re-hash every cached file (the download against its pinned sha256, each unpacked file against
    /// the sha256 recorded when it was unpacked) instead of comparing sizes and modification times;
    /// a damaged file is fetched again.
    #[arg(long)]
    pub verify: bool,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Runs `ramole fetch`: prints `name<TAB>path` for each asset, once it is verified and in the cache
/// (`$RAMOLE_HOME`, else `~/.cache/ramole`); each damaged copy found and replaced is reported on
/// stderr.
pub fn run(args: Args) -> anyhow::Result<()> {
    let cache = AssetCache::from_env()?.quiet(args.quiet);
    let level = if args.verify { Verify::Full } else { Verify::Quick };
    for asset in args.which.assets() {
        let ready = cache.ensure(&asset, level).with_context(|| format!("fetching `{}`", asset.name))?;
        for why in &ready.repaired {
            eprintln!("{}: damaged copy in the cache replaced: {why}", asset.name);
        }
        println!("{}\t{}", asset.name, ready.path.display());
    }
    Ok(())
}
