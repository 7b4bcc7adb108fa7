//! Time-bounded fuzzing (`$RAMOLE_FUZZ_SECS`) of `adapter_config.json` parsing, through the function the
//! loader uses ([`AdapterConfig::parse`]), seeded with the tiny-llama fixture adapters' configs.

use std::path::{Path, PathBuf};

use ramole_mole::peft::AdapterConfig;

#[test]
fn fuzz_adapter_config_json() {
    let adapters = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/fixtures/tiny-llama/adapters");
    let seeds: Vec<Vec<u8>> = ["a0", "a1", "a2", "a3"]
        .iter()
        .map(|a| std::fs::read(adapters.join(a).join("adapter_config.json")).expect("fixture adapter config"))
        .collect();
    let path = Path::new("adapter_config.json");
    ramole_testkit::fuzz("adapter_config.json", &seeds, |bytes| {
        let Ok(text) = std::str::from_utf8(bytes) else { return false };
        match AdapterConfig::parse(text, path) {
            Ok(c) => {
                assert!(c.r > 0 && c.r <= ramole_mole::peft::MAX_RANK && c.lora_alpha.is_finite());
                let _ = c.scale();
                true
            }
            Err(e) => {
                assert!(e.to_string().starts_with("adapter_config.json: "), "{e}");
                assert!(e.to_string().len() < 4096, "an error message stays short");
                false
            }
        }
    });
}
