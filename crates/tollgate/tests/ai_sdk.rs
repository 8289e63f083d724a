//! The official OpenAI and Anthropic Python SDKs against the real gateway.
//!
//! `tests/sdk/check_sdks.py` drives the gateway with the `openai` and
//! `anthropic` packages pinned in `tests/sdk/requirements.txt` — chat and
//! messages whole and streamed, tool calls, models, embeddings, errors, and
//! each SDK talking to the other provider's model — through fake providers of
//! both formats. Whatever the SDKs parse is what a real client application
//! would see.
//!
//! The SDKs are installed into a virtualenv under the target directory
//! (`$CARGO_TARGET_TMPDIR/sdk-venv`) once per requirements and interpreter: a
//! marker file in the virtualenv holds their hash, so reruns skip pip. The
//! virtualenv is built beside its final place and renamed into it, so that a
//! test interrupted mid-install or run twice at once leaves no half-built one.
//!
//! Without Python 3 and its `venv` module, or when pip cannot reach the
//! package index, the test says why and passes — unless `CI` is set, where
//! that is a failure. `TOLLGATE_SDK_PYTHON` names another interpreter than
//! `python3`.

mod common;

use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::process::Command;
use tollgate_testkit::{FakeKind, FakeLlm, Gateway, Reply};

const APP_KEY: &str = "tg_app_key_for_sdk_tests_0123456789abcdef";
const OPENAI_KEY: &str = "sk-openai-provider-key-1";
const ANTHROPIC_KEY: &str = "sk-anthropic-provider-key-1";

const SDK_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk");
const REQUIREMENTS: &str = include_str!("sdk/requirements.txt");
/// In the virtualenv: the hash of what it was built from.
const MARKER: &str = "tollgate-sdk-requirements.sha256";

const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);
const CHECKS_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn the_official_python_sdks_work_through_the_gateway() {
    let Some(python) = sdk_python().await else {
        return;
    };
    let openai = FakeLlm::start(FakeKind::OpenAi).await;
    let anthropic = FakeLlm::start(FakeKind::Anthropic).await;
    let gateway = common::gateway()
        .config(&config(&openai, &anthropic))
        .start()
        .await;

    // Everything that takes the fakes' default reply.
    let plain = run_checks(&python, &gateway, &[]).await;

    // Tool calls, each asked for twice (whole, then streamed), in the order
    // the script asks: openai-tools (OpenAI fake), anthropic-tools (Anthropic
    // fake), then cross-tools (the OpenAI SDK to claude-smart, the Anthropic
    // SDK to gpt-smart).
    let call = |city: &str| Reply::tool_call("get_weather", format!(r#"{{"city":"{city}"}}"#));
    for (fake, first, then) in [(&openai, "Paris", "Oslo"), (&anthropic, "Oslo", "Paris")] {
        for city in [first, first, then, then] {
            fake.push(call(city));
        }
    }
    let tools = run_checks(
        &python,
        &gateway,
        &["openai-tools", "anthropic-tools", "cross-tools"],
    )
    .await;
    assert!(
        plain.success && tools.success,
        "the SDK checks failed:\n{}{}\n{}",
        plain.text,
        tools.text,
        gateway.logs()
    );

    // The providers saw their own keys, never the client's.
    for (fake, key) in [(&openai, OPENAI_KEY), (&anthropic, ANTHROPIC_KEY)] {
        let requests = fake.requests();
        assert!(!requests.is_empty());
        for request in requests {
            assert_eq!(request.key(), Some(key), "{}", request.path);
            let raw = format!("{:?}{}", request.headers, request.body);
            assert!(!raw.contains(APP_KEY), "the client's key leaked: {raw}");
        }
    }
}

/// Two providers, one model on each plus one for embeddings, and one AI API
/// at `/v1` behind a key: the OpenAI SDK sends it as `Authorization: Bearer`,
/// the Anthropic SDK as `x-api-key`.
fn config(openai: &FakeLlm, anthropic: &FakeLlm) -> String {
    format!(
        r#"
consumers:
  - name: app
    keys: [{{ value: "{APP_KEY}" }}]
ai:
  providers:
    - {{ name: oa, kind: openai, keys: ["{OPENAI_KEY}"], base_url: "{openai}" }}
    - {{ name: an, kind: anthropic, keys: ["{ANTHROPIC_KEY}"], base_url: "{anthropic}" }}
  models:
    - {{ name: gpt-smart, targets: [{{ provider: oa, model: gpt-4o }}] }}
    - {{ name: claude-smart, targets: [{{ provider: an, model: claude-sonnet-4-5 }}] }}
    - {{ name: text-embed, targets: [{{ provider: oa, model: text-embedding-3-small }}] }}
apis:
  - name: llm
    match: {{ paths: [/v1] }}
    ai: {{ endpoints: [chat, embeddings, models, messages] }}
    policies:
      auth: {{ methods: [key], key_header: x-api-key }}
"#,
        openai = openai.base_url(),
        anthropic = anthropic.base_url(),
    )
}

/// Runs `check_sdks.py` with `checks` (none: its default set), printing what
/// it says; panics only when it cannot run.
async fn run_checks(python: &Path, gateway: &Gateway, checks: &[&str]) -> Output {
    let started = Instant::now();
    let mut command = Command::new(python);
    command
        .arg(Path::new(SDK_DIR).join("check_sdks.py"))
        .arg("--base-url")
        .arg(gateway.proxy_url())
        .arg("--key")
        .arg(APP_KEY)
        .args(checks)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        // The SDKs' HTTP client honours proxy variables; the gateway is local.
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost");
    let output = run(&mut command, CHECKS_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("check_sdks.py did not run: {e}"));
    println!("{}(SDK checks took {:.1?})", output.text, started.elapsed());
    output
}

/// Why the SDKs cannot be set up.
enum Setup {
    /// This machine lacks what the test needs (Python, venv, the index): a
    /// skip, except in CI.
    Unavailable(String),
    /// Something that should work did not: always a failure.
    Broken(String),
}

/// The interpreter of a virtualenv holding the pinned SDKs, or `None` after
/// saying why the test is skipped.
async fn sdk_python() -> Option<PathBuf> {
    let started = Instant::now();
    match prepare_venv().await {
        Ok(python) => {
            println!("SDK virtualenv ready in {:.1?}", started.elapsed());
            Some(python)
        }
        Err(Setup::Unavailable(why)) if std::env::var_os("CI").is_none() => {
            eprintln!("skipping the Python SDK test: {why}");
            None
        }
        Err(Setup::Unavailable(why) | Setup::Broken(why)) => {
            panic!("cannot set up the Python SDKs: {why}")
        }
    }
}

async fn prepare_venv() -> Result<PathBuf, Setup> {
    let base: OsString =
        std::env::var_os("TOLLGATE_SDK_PYTHON").unwrap_or_else(|| "python3".into());
    let shown = base.to_string_lossy().into_owned();
    let probe = run(
        Command::new(&base).args([
            "-c",
            "import sys, venv, ensurepip; print(sys.executable, sys.version)",
        ]),
        PROBE_TIMEOUT,
    )
    .await
    .map_err(|e| Setup::Unavailable(format!("`{shown}` cannot run: {e}")))?;
    if !probe.success {
        return Err(Setup::Unavailable(format!(
            "`{shown}` lacks the venv or ensurepip module:\n{}",
            probe.text
        )));
    }
    // The interpreter is part of the hash: a virtualenv belongs to one.
    let hash = hex::encode(Sha256::digest(format!("{REQUIREMENTS}\n{}", probe.text)));

    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sdk-venv");
    if built_from(&venv, &hash) {
        return Ok(interpreter(&venv));
    }
    let partial = venv.with_file_name(format!("sdk-venv.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    if let Err(e) = build_venv(&base, &partial, &hash).await {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(e);
    }
    // Another run may have finished first; either one will do.
    if !built_from(&venv, &hash) {
        let _ = std::fs::remove_dir_all(&venv);
        if let Err(e) = std::fs::rename(&partial, &venv) {
            if !built_from(&venv, &hash) {
                return Err(Setup::Broken(format!(
                    "cannot move {} to {}: {e}",
                    partial.display(),
                    venv.display()
                )));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&partial);
    Ok(interpreter(&venv))
}

fn built_from(venv: &Path, hash: &str) -> bool {
    std::fs::read_to_string(venv.join(MARKER)).is_ok_and(|h| h.trim() == hash)
        && interpreter(venv).exists()
}

fn interpreter(venv: &Path) -> PathBuf {
    if cfg!(windows) {
        venv.join("Scripts").join("python.exe")
    } else {
        venv.join("bin").join("python")
    }
}

/// A fresh virtualenv at `dir` with the requirements installed, quietly.
async fn build_venv(base: &OsString, dir: &Path, hash: &str) -> Result<(), Setup> {
    let made = run(
        Command::new(base).args(["-m", "venv"]).arg(dir),
        INSTALL_TIMEOUT,
    )
    .await
    .map_err(Setup::Unavailable)?;
    if !made.success {
        return Err(Setup::Unavailable(format!(
            "cannot create a virtualenv:\n{}",
            made.text
        )));
    }
    let installed = run(
        Command::new(interpreter(dir))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(["--no-input", "--retries", "1", "--timeout", "30", "-r"])
            .arg(Path::new(SDK_DIR).join("requirements.txt")),
        INSTALL_TIMEOUT,
    )
    .await
    .map_err(Setup::Unavailable)?;
    if !installed.success {
        let why = format!("pip install failed:\n{}", installed.text);
        return Err(if unreachable_index(&installed.text) {
            Setup::Unavailable(why)
        } else {
            Setup::Broken(why)
        });
    }
    std::fs::write(dir.join(MARKER), hash)
        .map_err(|e| Setup::Broken(format!("cannot write the marker: {e}")))
}

/// Whether pip failed for want of a network rather than for a bad pin.
fn unreachable_index(pip_output: &str) -> bool {
    [
        "NewConnectionError",
        "Failed to establish a new connection",
        "Temporary failure in name resolution",
        "Name or service not known",
        "Network is unreachable",
        "ConnectTimeoutError",
        "Read timed out",
        "ProxyError",
        "Connection refused",
        "timed out after",
    ]
    .iter()
    .any(|sign| pip_output.contains(sign))
}

/// What a finished command printed (stdout and stderr interleaved) and
/// whether it succeeded.
struct Output {
    success: bool,
    text: String,
}

/// Runs `command` without input, for at most `timeout`; a command that runs
/// longer is killed and reported as failed, with what it printed so far.
async fn run(command: &mut Command, timeout: Duration) -> Result<Output, String> {
    let mut log = tempfile::tempfile().map_err(|e| format!("no temporary file: {e}"))?;
    let clone = || {
        log.try_clone()
            .map_err(|e| format!("cannot share a file: {e}"))
    };
    command
        .stdin(Stdio::null())
        .stdout(clone()?)
        .stderr(clone()?)
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| e.to_string())?;
    let status = tokio::time::timeout(timeout, child.wait()).await;
    if status.is_err() {
        let _ = child.kill().await;
    }
    let mut bytes = Vec::new();
    log.seek(SeekFrom::Start(0))
        .and_then(|_| log.read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read the output: {e}"))?;
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    let success = match status {
        Ok(Ok(status)) => status.success(),
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => {
            text.push_str(&format!("\n(timed out after {timeout:?}; killed)\n"));
            false
        }
    };
    Ok(Output { success, text })
}
