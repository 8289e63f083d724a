//! A headless Chromium of the test's own, driven through `chromedriver` on a
//! free loopback port (WebDriver, with [`fantoccini`]); for the web console's
//! end-to-end tests.
//!
//! ```no_run
//! use tollgate_testkit::browser::Browser;
//! # async fn example(admin_url: String) {
//! let Some(browser) = Browser::start().await else { return }; // skipped: no Chromium
//! browser.goto(&format!("{admin_url}/console/login")).await;
//! browser.fill("input[name=username]", "alice").await;
//! browser.click("button[type=submit]").await;
//! assert_eq!(browser.text("h1").await, "Dashboard");
//! browser.screenshot("dashboard").await; // target/console-screenshots/dashboard.png
//! browser.close().await;
//! # }
//! ```
//!
//! The binaries are `/usr/bin/chromedriver` and `/usr/bin/chromium` (Debian's
//! `chromium-driver` and `chromium`), or those `TOLLGATE_TEST_CHROMEDRIVER`
//! and `TOLLGATE_TEST_CHROMIUM` name. Without them, [`Browser::start`] prints
//! why and returns `None`, so the test skips — unless `CI` is set, where a
//! missing browser is a failure, not a reason to skip.
//!
//! One `Browser` per test: the WebDriver session lives on the test's Tokio
//! runtime. The helpers panic with the page's URL and source when the page is
//! not what the test expects, so that a failure says where the browser was.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::panic::Location;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::cookies::Cookie;
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

use crate::port;

/// The variable naming the `chromedriver` binary tests use.
pub const CHROMEDRIVER_ENV: &str = "TOLLGATE_TEST_CHROMEDRIVER";
/// The variable naming the Chromium binary tests use.
pub const CHROMIUM_ENV: &str = "TOLLGATE_TEST_CHROMIUM";

const DEFAULT_CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";

/// How long `chromedriver` may take to answer `/status` after it is spawned.
const READY_DEADLINE: Duration = Duration::from_secs(10);
/// How long [`Browser::wait_for`] and the helpers built on it poll.
pub const WAIT_DEADLINE: Duration = Duration::from_secs(10);
/// How often they look again.
const POLL_PERIOD: Duration = Duration::from_millis(50);

/// A running `chromedriver` with one headless Chromium session. Dropping it
/// kills `chromedriver` and the Chromium it started (their process group);
/// [`close`](Self::close) first ends the session cleanly.
pub struct Browser {
    client: Client,
    driver: Child,
    /// Chromium's profile and `chromedriver`'s log.
    dir: tempfile::TempDir,
}

impl Browser {
    /// Starts `chromedriver` on a free port, waits until it answers, and
    /// opens a session with a headless Chromium (1280×900); or returns `None`
    /// after printing why when `chromedriver` or Chromium is missing (panics
    /// instead when `CI` is set). The message names the caller.
    #[track_caller]
    pub fn start() -> impl Future<Output = Option<Browser>> {
        let caller = Location::caller();
        async move { Self::start_for(caller).await }
    }

    async fn start_for(caller: &'static Location<'static>) -> Option<Browser> {
        let driver_bin = binary(CHROMEDRIVER_ENV, DEFAULT_CHROMEDRIVER);
        let chromium_bin = binary(CHROMIUM_ENV, DEFAULT_CHROMIUM);
        let missing = [
            (&driver_bin, CHROMEDRIVER_ENV, "chromium-driver"),
            (&chromium_bin, CHROMIUM_ENV, "chromium"),
        ]
        .into_iter()
        .find(|(path, _, _)| !path.is_file());
        if let Some((path, var, package)) = missing {
            if std::env::var_os("CI").is_some() {
                panic!("{caller}: {} is required in CI", path.display());
            }
            eprintln!(
                "skipping the test at {caller}: no {} (install Debian's `{package}` or set {var})",
                path.display()
            );
            return None;
        }

        let dir = tempfile::tempdir().expect("a temporary directory");
        // The port was free when picked; another process may take it before
        // chromedriver binds it. Then try another.
        let mut attempt = 0;
        let (driver, addr) = loop {
            attempt += 1;
            let addr = port::free_addr();
            let log = std::fs::File::create(dir.path().join("chromedriver.log"))
                .expect("chromedriver's log file");
            let mut driver = Command::new(&driver_bin)
                .arg(format!("--port={}", addr.port()))
                // A group of its own, Chromium's processes in it too: see Drop.
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("chromedriver's log file"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("{caller}: cannot run {}: {e}", driver_bin.display()));
            match wait_ready(&mut driver, addr).await {
                Ok(()) => break (driver, addr),
                Err(message) => {
                    kill_group(&mut driver);
                    let log = std::fs::read_to_string(dir.path().join("chromedriver.log"))
                        .unwrap_or_default();
                    assert!(attempt < 3, "{caller}: {message}:\n{log}");
                }
            }
        };

        let profile = dir.path().join("profile");
        let capabilities = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium_bin,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object")
        };
        let connected = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://{addr}"))
            .await;
        Some(Browser {
            client: match connected {
                Ok(client) => client,
                Err(error) => {
                    let mut driver = driver;
                    kill_group(&mut driver);
                    let log = std::fs::read_to_string(dir.path().join("chromedriver.log"))
                        .unwrap_or_default();
                    panic!(
                        "{caller}: chromedriver could not start {}: {error}\n{log}",
                        chromium_bin.display()
                    );
                }
            },
            driver,
            dir,
        })
    }

    /// The WebDriver client, for what the helpers below do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Ends the session (Chromium quits), then `chromedriver`. Call it at
    /// the end of a test; a test that panics before drops the `Browser`,
    /// which kills both.
    pub async fn close(self) {
        if let Err(error) = self.client.clone().close().await {
            eprintln!("closing the browser session: {error}");
        }
    }

    /// Opens `url` and waits until it has loaded.
    pub async fn goto(&self, url: &str) {
        if let Err(error) = self.client.goto(url).await {
            panic!("the browser could not open {url}: {error}");
        }
    }

    /// The address the browser shows.
    pub async fn current_url(&self) -> String {
        self.client
            .current_url()
            .await
            .expect("the browser's current URL")
            .to_string()
    }

    /// The path of the address the browser shows (`/console/login`).
    pub async fn current_path(&self) -> String {
        self.client
            .current_url()
            .await
            .expect("the browser's current URL")
            .path()
            .to_string()
    }

    /// The page's HTML as the browser has it now.
    pub async fn source(&self) -> String {
        self.client.source().await.unwrap_or_default()
    }

    /// The first element matching `css`, once there is one (polled for
    /// [`WAIT_DEADLINE`]); panics with the page's URL and source after that.
    pub async fn wait_for(&self, css: &str) -> Element {
        let found = self
            .client
            .wait()
            .at_most(WAIT_DEADLINE)
            .every(POLL_PERIOD)
            .for_element(Locator::Css(css))
            .await;
        match found {
            Ok(element) => element,
            Err(error) => panic!(
                "no element `{css}` within {WAIT_DEADLINE:?} ({error}) at {}:\n{}",
                self.current_url().await,
                self.source().await
            ),
        }
    }

    /// Whether an element matches `css` right now (no waiting).
    pub async fn exists(&self, css: &str) -> bool {
        !self
            .client
            .find_all(Locator::Css(css))
            .await
            .unwrap_or_default()
            .is_empty()
    }

    /// Waits until the browser shows `path` (after a form was submitted, a
    /// link followed, a redirect); panics with the page after
    /// [`WAIT_DEADLINE`].
    pub async fn wait_for_path(&self, path: &str) {
        let until = Instant::now() + WAIT_DEADLINE;
        loop {
            if self.current_path().await == path {
                return;
            }
            if Instant::now() >= until {
                panic!(
                    "the browser did not reach {path} within {WAIT_DEADLINE:?}: it shows {}:\n{}",
                    self.current_url().await,
                    self.source().await
                );
            }
            tokio::time::sleep(POLL_PERIOD).await;
        }
    }

    /// The visible text of the first element matching `css` (waited for).
    pub async fn text(&self, css: &str) -> String {
        let element = self.wait_for(css).await;
        element
            .text()
            .await
            .unwrap_or_else(|e| panic!("the text of `{css}`: {e}"))
    }

    /// The visible text of the first element matching `css` that contains
    /// `needle`, waited for: after a click that loads a new page, the old
    /// page's element may still match (or go stale while it is read), so a
    /// test that expects the new page's message waits for that message.
    pub async fn text_containing(&self, css: &str, needle: &str) -> String {
        let until = Instant::now() + WAIT_DEADLINE;
        loop {
            let elements = self
                .client
                .find_all(Locator::Css(css))
                .await
                .unwrap_or_default();
            for element in elements {
                // A stale element belongs to a page that is going away.
                if let Ok(text) = element.text().await {
                    if text.contains(needle) {
                        return text;
                    }
                }
            }
            if Instant::now() >= until {
                panic!(
                    "no `{css}` containing {needle:?} within {WAIT_DEADLINE:?} at {}:\n{}",
                    self.current_url().await,
                    self.source().await
                );
            }
            tokio::time::sleep(POLL_PERIOD).await;
        }
    }

    /// Replaces the value of the field matching `css` by `text`, typed.
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.wait_for(css).await;
        field
            .clear()
            .await
            .unwrap_or_else(|e| panic!("clearing `{css}`: {e}"));
        field
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("typing into `{css}`: {e}"));
    }

    /// Clicks the first element matching `css` (waited for).
    pub async fn click(&self, css: &str) {
        self.wait_for(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("clicking `{css}`: {e}"));
    }

    /// The cookie `name` the browser holds for the current page, with its
    /// attributes (`http_only()`, `same_site()`, `path()`…).
    pub async fn cookie(&self, name: &str) -> Option<Cookie<'static>> {
        self.client
            .get_all_cookies()
            .await
            .expect("the browser's cookies")
            .into_iter()
            .find(|cookie| cookie.name() == name)
    }

    /// Saves a PNG of the viewport as `<target>/console-screenshots/<name>.png`
    /// (see [`screenshots_dir`]) and returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self
            .client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("screenshot {name}: {e}"));
        let dir = screenshots_dir();
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }

    /// `chromedriver`'s log so far.
    pub fn driver_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&mut self.driver);
    }
}

/// Kills `chromedriver` and its process group, and waits for it: Chromium
/// talks to chromedriver over a TCP port and outlives a killed chromedriver,
/// but stays in its group (only its crash handlers leave it, and they exit
/// with it).
fn kill_group(driver: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", driver.id())])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = driver.kill();
    let _ = driver.wait();
}

/// Where [`Browser::screenshot`] saves: `console-screenshots` in the
/// workspace's target directory (`CARGO_TARGET_DIR` when set, a relative one
/// taken from the workspace root).
pub fn screenshots_dir() -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(|dir| workspace.join(dir))
        .unwrap_or_else(|| workspace.join("target"));
    target.join("console-screenshots")
}

/// The binary `var` names, or `default`.
fn binary(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

/// Polls `chromedriver`'s `/status` until it says it is ready; why not if it
/// exits or stays silent past the deadline.
async fn wait_ready(driver: &mut Child, addr: SocketAddr) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .expect("an HTTP client");
    let until = Instant::now() + READY_DEADLINE;
    loop {
        let status = http.get(format!("http://{addr}/status")).send().await;
        if let Ok(res) = status {
            let body: serde_json::Value = res.json().await.unwrap_or_default();
            if body["value"]["ready"] == true {
                return Ok(());
            }
        }
        if let Ok(Some(status)) = driver.try_wait() {
            return Err(format!("chromedriver on {addr} exited with {status}"));
        }
        if Instant::now() >= until {
            return Err(format!(
                "chromedriver on {addr} was not ready within {READY_DEADLINE:?}"
            ));
        }
        tokio::time::sleep(POLL_PERIOD).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The processes whose command line mentions `needle`.
    fn processes_with(needle: &str) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|entry| std::fs::read(entry.ok()?.path().join("cmdline")).ok())
            .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
            .filter(|cmdline| cmdline.contains(needle))
            .collect()
    }

    #[tokio::test]
    async fn dropping_a_browser_ends_chromium_too() {
        let Some(browser) = Browser::start().await else {
            return;
        };
        let profile = browser.dir.path().join("profile").display().to_string();
        browser.goto("about:blank").await;
        assert!(!processes_with(&profile).is_empty(), "no Chromium running");
        drop(browser);
        crate::eventually(Duration::from_secs(10), || async {
            processes_with(&profile).is_empty()
        })
        .await;
    }
}
