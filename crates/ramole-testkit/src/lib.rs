//! Test helpers shared by the RAMoLE-rs crates. Not published.
//!
//! [`fuzz`] feeds a parser of untrusted bytes with mutations of valid seed inputs (bit flips,
//! truncations, splices, huge or negative little-endian integers, repeated chunks) and with random
//! bytes, for a bounded time, and fails if the parser panics. The time per target is
//! `$RAMOLE_FUZZ_SECS` seconds (default 2; CI sets 10).
//!
//! [`byte_tokenizer_json`] is a byte-level tokenizer that fits the tiny test models (vocabulary
//! 512), so that commands taking text run end to end on them; [`tiny_llama_with_tokenizer`] makes
//! such a model folder from the repository's tiny-llama fixture.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Seconds per fuzz target: `$RAMOLE_FUZZ_SECS`, else 2.
pub fn fuzz_budget() -> Duration {
    let secs = std::env::var("RAMOLE_FUZZ_SECS").ok().and_then(|s| s.parse::<f64>().ok()).unwrap_or(2.0);
    Duration::from_secs_f64(secs.max(0.0))
}

/// What a fuzz run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FuzzReport {
    /// Inputs tried.
    pub inputs: u64,
    /// Inputs the parser accepted (the rest were refused with an error).
    pub accepted: u64,
}

/// Runs `parse` on mutations of `seeds` for [`fuzz_budget`] (at least 200 inputs), panicking with the
/// offending input if `parse` panics. `parse` returns whether it accepted the input. The seeds
/// themselves are tried first and must be accepted (so the target really parses something).
pub fn fuzz(name: &str, seeds: &[Vec<u8>], mut parse: impl FnMut(&[u8]) -> bool) -> FuzzReport {
    assert!(!seeds.is_empty(), "fuzz target `{name}` needs at least one seed");
    let mut report = FuzzReport { inputs: 0, accepted: 0 };
    for (i, seed) in seeds.iter().enumerate() {
        assert!(run_one(name, seed, &mut parse), "fuzz target `{name}`: seed {i} is not accepted");
        report.inputs += 1;
        report.accepted += 1;
    }
    let budget = fuzz_budget();
    let start = Instant::now();
    let mut rng = StdRng::seed_from_u64(0x5eed ^ name.len() as u64);
    while start.elapsed() < budget || report.inputs < 200 {
        let input = if rng.random_ratio(1, 16) {
            let n = rng.random_range(0..256);
            (0..n).map(|_| rng.random()).collect()
        } else {
            let seed = &seeds[rng.random_range(0..seeds.len())];
            let mut input = seed.clone();
            for _ in 0..rng.random_range(1..=4) {
                mutate(&mut input, seed, &mut rng);
            }
            input
        };
        report.inputs += 1;
        if run_one(name, &input, &mut parse) {
            report.accepted += 1;
        }
    }
    eprintln!(
        "fuzz `{name}`: {} inputs in {:.1} s, {} accepted, no panic",
        report.inputs,
        start.elapsed().as_secs_f64(),
        report.accepted
    );
    report
}

fn run_one(name: &str, input: &[u8], parse: &mut impl FnMut(&[u8]) -> bool) -> bool {
    match catch_unwind(AssertUnwindSafe(|| parse(input))) {
        Ok(accepted) => accepted,
        Err(_) => {
            let shown: Vec<u8> = input.iter().copied().take(512).collect();
            panic!("fuzz target `{name}` panicked on a {}-byte input starting {shown:?}", input.len())
        }
    }
}

/// Integers that break size arithmetic.
const NASTY: [u64; 8] = [0, 1, 0x7f, 0xff, 0x7fff_ffff, 0xffff_ffff, 0x7fff_ffff_ffff_ffff, u64::MAX];

fn mutate(input: &mut Vec<u8>, seed: &[u8], rng: &mut StdRng) {
    if input.is_empty() {
        input.push(rng.random());
        return;
    }
    let at = rng.random_range(0..input.len());
    match rng.random_range(0..8) {
        0 => input[at] ^= 1 << rng.random_range(0..8),
        1 => input[at] = rng.random(),
        2 => input.truncate(at),
        3 => {
            // A little-endian integer of 1, 2, 4 or 8 bytes overwritten by a nasty value.
            let width = [1usize, 2, 4, 8][rng.random_range(0..4)];
            let v = NASTY[rng.random_range(0..NASTY.len())].to_le_bytes();
            for (k, b) in v.iter().take(width).enumerate() {
                if let Some(slot) = input.get_mut(at + k) {
                    *slot = *b;
                }
            }
        }
        4 => {
            let n = rng.random_range(1..16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            input.splice(at..at, bytes);
        }
        5 => {
            let end = (at + rng.random_range(1..32)).min(input.len());
            input.drain(at..end);
        }
        6 => {
            // Repeat a chunk of the seed (duplicate records, keys, array items).
            let start = rng.random_range(0..seed.len().max(1)).min(seed.len());
            let end = (start + rng.random_range(1..64)).min(seed.len());
            let chunk = seed[start..end].to_vec();
            input.splice(at..at, chunk);
        }
        _ => {
            // ASCII digits and JSON punctuation, for text formats.
            const CHARS: &[u8] = b"0123456789-+.eE\"{}[],:\\ \n\tnulltruefalse\xef\xbb\xbf\xff";
            input[at] = CHARS[rng.random_range(0..CHARS.len())];
        }
    }
}

/// GPT-2's byte-to-character map (the alphabet of byte-level BPE).
fn byte_chars() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut next = 256;
    (0..256u32)
        .map(|b| {
            let c = if printable(b) {
                b
            } else {
                next += 1;
                next - 1
            };
            char::from_u32(c).unwrap_or('?')
        })
        .collect()
}

/// An HF `tokenizer.json` for a byte-level tokenizer: ids 0 `<pad>`, 1 `<s>`, 2 `</s>` (special),
/// then one token per byte (ids 3–258), no merges. Every text encodes to one token per byte.
pub fn byte_tokenizer_json() -> String {
    let mut vocab = serde_json::Map::new();
    for (i, c) in byte_chars().into_iter().enumerate() {
        vocab.insert(c.to_string(), serde_json::json!(i + 3));
    }
    let specials = ["<pad>", "<s>", "</s>"];
    for (id, s) in specials.iter().enumerate() {
        vocab.insert((*s).to_string(), serde_json::json!(id));
    }
    let added: Vec<serde_json::Value> = specials
        .iter()
        .enumerate()
        .map(|(id, s)| {
            serde_json::json!({"id": id, "content": s, "single_word": false, "lstrip": false, "rstrip": false,
                               "normalized": false, "special": true})
        })
        .collect();
    let byte_level =
        serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
        "pre_tokenizer": byte_level, "post_processor": null, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": []},
    })
    .to_string()
}

/// The repository's `tests/data/fixtures/tiny-llama/base` copied into `dir` with
/// [`byte_tokenizer_json`] beside it; returns the model folder.
pub fn tiny_llama_with_tokenizer(dir: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/fixtures/tiny-llama/base");
    let out = dir.join("tiny-llama");
    std::fs::create_dir_all(&out)?;
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(file), out.join(file))?;
    }
    std::fs::write(out.join("tokenizer.json"), byte_tokenizer_json())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzz_tries_the_seeds_and_mutations_and_catches_panics() {
        let seeds = vec![b"{\"a\": 1}".to_vec()];
        let report = fuzz("json", &seeds, serde_json_like);
        assert!(report.inputs >= 200);
        assert!(report.accepted >= 1 && report.accepted < report.inputs);
        let caught = catch_unwind(|| fuzz("panics", &seeds, |b| b.len() >= 8 || panic!("boom")));
        assert!(caught.is_err());
    }

    #[test]
    fn the_byte_tokenizer_encodes_one_token_per_byte_and_decodes_back() {
        let tok: tokenizers::Tokenizer = byte_tokenizer_json().parse().expect("valid tokenizer.json");
        let text = "Plural of mouse: mice. Ünïcode ✓";
        let ids = tok.encode(text, false).expect("encode").get_ids().to_vec();
        assert_eq!(ids.len(), text.len());
        assert!(ids.iter().all(|&i| (3..259).contains(&i)));
        assert_eq!(tok.decode(&ids, false).expect("decode"), text);
        let ids = tok.encode("a</s>", false).expect("encode").get_ids().to_vec();
        assert_eq!(ids, vec![b'a' as u32 + 3, 2]);
    }

    fn serde_json_like(b: &[u8]) -> bool {
        b.first() == Some(&b'{') && b.last() == Some(&b'}')
    }
}
