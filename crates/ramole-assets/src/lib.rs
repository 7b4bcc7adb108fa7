#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod asset;
mod cache;
mod error;
mod marker;

pub use asset::{ALL, Asset, MINILM, SMOLLM2};
pub use cache::{AssetCache, Health, Ready, Verify};
pub use error::AssetError;
