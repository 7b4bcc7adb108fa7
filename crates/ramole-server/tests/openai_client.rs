//! The real Python `openai` client (installed into a venv of its own under the target folder on first
//! run) against the server on the tiny Llama: completion, chat, streaming, `model` = an adapter,
//! `"ramole"` routing, an explicit mixture through `extra_body`, and its typed errors.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Running, setup};
use ramole_server::ServeConfig;

/// A Python with `openai` installed: `$RAMOLE_OPENAI_PYTHON`, or a venv made here with pip.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("RAMOLE_OPENAI_PYTHON") {
        return p.into();
    }
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("openai-venv");
    let python = venv.join("bin/python");
    let ready = Command::new(&python).args(["-c", "import openai"]).status().is_ok_and(|s| s.success());
    if !ready {
        let made = Command::new("python3").arg("-m").arg("venv").arg(&venv).status().expect("python3 runs");
        assert!(made.success(), "python3 -m venv {} (Debian: apt-get install python3-venv)", venv.display());
        let pip = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "openai>=1.40,<3"])
            .status()
            .expect("pip runs");
        assert!(pip.success(), "pip install openai");
    }
    python
}

#[test]
fn the_openai_python_client_gets_routed_answers() {
    let python = python();
    let tmp = tempfile::tempdir().expect("tmp");
    let (model, pool) = setup(tmp.path());
    let config = ServeConfig { model_name: "tiny".into(), api_key: Some("sesame".into()), ..Default::default() };
    let server = Running::start(common::ramole(&model, &pool), config);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py");
    let out = Command::new(python)
        .arg(script)
        .arg(format!("http://{}/v1", server.addr))
        .arg("sesame")
        .output()
        .expect("the client runs");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("openai client: 12 checks passed"), "{said}");
    server.stop();
}
