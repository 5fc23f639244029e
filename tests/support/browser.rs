//! A real browser for the merchant's page: headless Chromium driven over WebDriver by
//! chromedriver (Debian's `chromium` and `chromium-driver`). Neither is optional: a test that
//! needs them fails, loudly, when they are missing.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::free_ports;

/// A headless Chromium session, in UTC, with a profile of its own; chromedriver and the browser
/// stop, and the profile goes, when it is dropped. Every page it opens records the violations of
/// its content security policy from its first script on (see [`Browser::violations`]).
pub struct Browser {
    pub client: Client,
    /// Where the browser saves downloads.
    pub downloads: tempfile::TempDir,
    /// Held for its lifetime: removed when the browser is gone.
    _profile: tempfile::TempDir,
    driver: Child,
}

/// A DevTools command, sent through chromedriver.
#[derive(Debug)]
struct Cdp {
    cmd: &'static str,
    params: Value,
}

impl WebDriverCompatibleCommand for Cdp {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/goog/cdp/execute", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(json!({"cmd": self.cmd, "params": self.params}).to_string()))
    }
}

/// Runs before any script of every page: records each violation of the page's policy.
const RECORD_VIOLATIONS: &str = "window.violations = []; document.addEventListener('securitypolicyviolation', \
    (e) => window.violations.push(e.violatedDirective + ' ' + e.blockedURI));";

/// `name` from `$var`, or on the PATH; a panic naming the package otherwise.
fn tool(var: &str, name: &str, package: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(var) {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("{name} not found: the page's tests need a real browser; install it (apt-get install {package}) or set {var}")
    })
}

impl Browser {
    pub async fn start() -> Browser {
        let chromium = tool("CASHFLOW_CHROMIUM", "chromium", "chromium");
        let chromedriver = tool("CASHFLOW_CHROMEDRIVER", "chromedriver", "chromium-driver");
        let [port] = free_ports();
        let downloads = tempfile::tempdir().unwrap();
        let profile = tempfile::tempdir().unwrap();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            // Its own process group, with the browsers it starts: all end with the test.
            .process_group(0)
            .env("TZ", "UTC")
            // Chromium's own temporary files, too, go with the profile.
            .env("TMPDIR", profile.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} did not start: {e}", chromedriver.display()));
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,2000", "--lang=pt-BR", "--no-first-run",
                         format!("--user-data-dir={}", profile.path().display())],
                "prefs": {
                    "download.default_directory": downloads.path(),
                    "download.prompt_for_download": false,
                },
            },
        });
        let Value::Object(capabilities) = capabilities else { unreachable!("an object literal") };
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            let mut builder = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
            builder.capabilities(capabilities.clone());
            match builder.connect(&url).await {
                Ok(client) => break client,
                Err(e) if Instant::now() > deadline => panic!("no WebDriver session from chromedriver at {url}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let record = Cdp { cmd: "Page.addScriptToEvaluateOnNewDocument", params: json!({"source": RECORD_VIOLATIONS}) };
        client.issue_cmd(record).await.unwrap();
        Browser { client, downloads, _profile: profile, driver }
    }

    /// The violations of the content security policy the current page has recorded.
    pub async fn violations(&self) -> Value {
        self.js("return window.violations", vec![]).await
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    pub async fn find(&self, css: &str) -> Element {
        self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no element {css}: {e}"))
    }

    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        self.client.find_all(Locator::Css(css)).await.unwrap()
    }

    /// The text of the element `css`.
    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap()
    }

    /// Clears the input `css` and types `text` into it.
    pub async fn type_into(&self, css: &str, text: &str) {
        let input = self.find(css).await;
        input.clear().await.unwrap();
        input.send_keys(text).await.unwrap();
    }

    pub async fn click(&self, css: &str) {
        self.find(css).await.click().await.unwrap();
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client.execute(script, args).await.unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Waits (up to 15 s) until `script` returns true.
    pub async fn wait_until(&self, what: &str, script: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.js(script, vec![]).await != Value::Bool(true) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; page says: {}",
                self.text("#aviso").await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (up to 15 s) until a file is fully downloaded, and returns its path.
    pub async fn downloaded(&self) -> PathBuf {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let files: Vec<PathBuf> =
                std::fs::read_dir(self.downloads.path()).unwrap().map(|e| e.unwrap().path()).collect();
            let done = files.iter().find(|p| p.extension().is_some_and(|e| e == "csv"));
            if let Some(done) = done
                && files.len() == 1
            {
                return done.clone();
            }
            assert!(Instant::now() < deadline, "no download finished in 15 s: {files:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a PNG of the viewport at `path`.
    pub async fn screenshot(&self, path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, self.client.screenshot().await.unwrap()).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver and every browser process it started, passed or panicked.
        let group = nix::unistd::Pid::from_raw(-(self.driver.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.driver.wait();
        // The profile and the downloads go after this, with the fields.
    }
}

/// Where tests leave files for people to look at: `$CASHFLOW_ARTIFACTS`, or `artifacts/` in the
/// target directory.
pub fn artifacts_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CASHFLOW_ARTIFACTS") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test>
    exe.ancestors().nth(3).expect("a test binary lives in target/<profile>/deps").join("artifacts")
}
