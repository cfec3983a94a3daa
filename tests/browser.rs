//! End to end in a real browser: headless Chromium, driven over WebDriver, uses the page at `/` against
//! a real server and worker: submit, live progress, reload mid-job, cancel, copy and download.
//!
//! Needs Debian's chromium and chromium-driver (`scripts/install-browser.sh` installs them). Without them
//! the test fails and says so: a browser test that skips itself would hide a broken page.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::helpers::{TestEnv, PATIENCE};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A job long enough to be watched, reloaded and cancelled part-way: about 3.5 s of compute on this
/// machine's two cores (the worker's kernel is optimised in test builds too), and 18 million digits.
const LONG_N: u64 = 3_000_000;

/// Every job of the page, as the page shows it: its test hooks read back in one script run.
const JOBS_JS: &str = r#"
return [...document.querySelectorAll('#jobs > li.job')].map((li) => {
  const shown = (e) => !!e && !e.closest('[hidden]');
  const bar = li.querySelector('.progress');
  const phase = li.querySelector('.phase');
  const digits = li.querySelector('.digits');
  const preview = li.querySelector('.preview');
  return {
    id: li.dataset.id || null,
    n: li.dataset.n,
    status: li.dataset.status,
    fraction: shown(bar) ? Number(bar.dataset.fraction) : null,
    phase: shown(phase) ? (phase.dataset.phase || null) : null,
    phase_text: shown(phase) ? phase.textContent : null,
    digits: digits ? digits.textContent : null,
    preview: preview ? preview.textContent : null,
    errors: [...li.querySelectorAll('.error')].map((e) => e.textContent),
    buttons: [...li.querySelectorAll('.actions button')].map((b) => b.classList[1]),
  };
});
"#;

/// Chromedriver and one Chromium session under it, each with a profile of their own.
struct Browser {
    client: Client,
    driver: tokio::process::Child,
    /// Chromedriver's own HTTP endpoint, for the commands fantoccini has no method for.
    driver_url: String,
    session: String,
    profile: PathBuf,
    downloads: PathBuf,
    closed: bool,
}

impl Browser {
    async fn start() -> Self {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: run scripts/install-browser.sh (installs Debian's {package}); \
                 the browser test does not skip without it"
            );
        }
        let port = free_port();
        let driver = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts (scripts/install-browser.sh installs it)");
        let driver_url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !http
            .get(format!("{driver_url}/status"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not answer on {driver_url}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let profile =
            std::env::temp_dir().join(format!("herald-chromium-{}", uuid::Uuid::new_v4().simple()));
        let downloads = profile.join("downloads");
        std::fs::create_dir_all(&downloads).unwrap();
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                // The background-networking flags matter here: on a machine without a network Chromium
                // otherwise keeps trying to reach its update and sync services and stalls pages.
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.join("user-data").display()),
                ],
                "prefs": {
                    "download.default_directory": downloads.display().to_string(),
                    "download.prompt_for_download": false,
                },
            },
        });
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities.as_object().unwrap().clone())
            .connect(&driver_url)
            .await
            .expect("chromedriver opens a Chromium session");
        let session = client.session_id().await.unwrap().expect("a session ID");
        Self {
            client,
            driver,
            driver_url,
            session,
            profile,
            downloads,
            closed: false,
        }
    }

    /// Opens `url` and lets its origin use the clipboard: the copy button writes to it, and the test
    /// reads it back. (Permissions are granted per origin, so only once a page of it is open.)
    async fn open(&self, url: &str) {
        self.client.goto(url).await.unwrap();
        for name in ["clipboard-read", "clipboard-write"] {
            self.driver_post(
                "permissions",
                json!({"descriptor": {"name": name}, "state": "granted"}),
            )
            .await;
        }
    }

    /// A session command of chromedriver's that fantoccini does not wrap.
    async fn driver_post(&self, command: &str, body: Value) -> Value {
        let response = reqwest::Client::new()
            .post(format!(
                "{}/session/{}/{command}",
                self.driver_url, self.session
            ))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("chromedriver answers");
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(
            status.is_success(),
            "chromedriver {command}: {status} {text}"
        );
        serde_json::from_str(&text).unwrap()
    }

    async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    async fn jobs(&self) -> Vec<Value> {
        match self.js(JOBS_JS, vec![]).await {
            Value::Array(jobs) => jobs,
            other => panic!("the jobs script returned {other}"),
        }
    }

    /// Polls the page's jobs until `check` finds what it waits for (a guard against hanging, not a
    /// timing test).
    async fn until<T>(&self, what: &str, mut check: impl FnMut(&[Value]) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let jobs = self.jobs().await;
            if let Some(found) = check(&jobs) {
                return found;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gave up waiting for {what}; the page shows: {jobs:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn until_connected(&self) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let state = self
                .js(
                    "return document.getElementById('conn').dataset.state;",
                    vec![],
                )
                .await;
            if state == "connected" {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the page did not connect (indicator: {state})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Types `n` into the form and presses Enter, as a keyboard user would; returns the job's request ID
    /// once the server has accepted it.
    async fn submit(&self, n: u64) -> String {
        let field = self.client.find(Locator::Id("n")).await.unwrap();
        field.clear().await.unwrap();
        field
            .send_keys(&format!("{n}{}", char::from(Key::Enter)))
            .await
            .unwrap();
        let n = n.to_string();
        self.until(&format!("the page to show {n} accepted"), |jobs| {
            jobs.iter()
                .find(|j| j["n"] == n.as_str() && j["id"].is_string())
                .map(|j| j["id"].as_str().unwrap().to_owned())
        })
        .await
    }

    async fn job(&self, id: &str) -> Value {
        self.jobs()
            .await
            .into_iter()
            .find(|j| j["id"] == id)
            .unwrap_or_else(|| panic!("job {id} is not listed"))
    }

    async fn click(&self, id: &str, button: &str) {
        self.client
            .find(Locator::Css(&format!(
                "li.job[data-id='{id}'] .actions button.{button}"
            )))
            .await
            .unwrap_or_else(|e| panic!("no {button} button on job {id}: {e}"))
            .click()
            .await
            .unwrap();
    }

    /// The page as a PNG under target/test-artifacts/browser/, for people to look at.
    async fn screenshot(&self, name: &str) -> PathBuf {
        // Let the bar's width transition settle, so the picture shows what the hooks say.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let png = self.client.screenshot().await.expect("a screenshot");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts/browser");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
        path
    }

    /// Emulates a phone's screen (CSS pixels), or goes back to the desktop window with `None`.
    async fn phone(&self, size: Option<(u32, u32)>) {
        let commands = match size {
            Some((width, height)) => [
                (
                    "Emulation.setDeviceMetricsOverride",
                    json!({"width": width, "height": height, "deviceScaleFactor": 2, "mobile": true}),
                ),
                // Phones overlay their scrollbars; a desktop one would eat into the 390 pixels.
                ("Emulation.setScrollbarsHidden", json!({"hidden": true})),
            ],
            None => [
                ("Emulation.clearDeviceMetricsOverride", json!({})),
                ("Emulation.setScrollbarsHidden", json!({"hidden": false})),
            ],
        };
        for (cmd, params) in commands {
            self.driver_post("goog/cdp/execute", json!({"cmd": cmd, "params": params}))
                .await;
        }
    }

    async fn clipboard(&self) -> Value {
        self.client
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 navigator.clipboard.readText().then(done, (e) => done('clipboard error: ' + e));",
                vec![],
            )
            .await
            .expect("the clipboard can be read")
    }

    async fn close(mut self) {
        self.closed = true;
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    /// Ends the Chromium session even when the test panicked: killing chromedriver alone would leave its
    /// Chromium running. Drop cannot await, so this speaks WebDriver over a plain blocking socket.
    fn drop(&mut self) {
        if !self.closed {
            delete_session_blocking(&self.driver_url, &self.session);
        }
        let _ = self.driver.start_kill();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn delete_session_blocking(driver_url: &str, session: &str) {
    use std::io::{Read, Write};
    let host = driver_url.trim_start_matches("http://");
    let Ok(mut socket) = std::net::TcpStream::connect(host) else {
        return;
    };
    let _ = socket.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(
        socket,
        "DELETE /session/{session} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let _ = socket.read_to_end(&mut Vec::new());
}

fn free_port() -> u16 {
    // Closed again before chromedriver binds it; another process taking it in between is unlikely on
    // loopback, and would fail the start loudly rather than silently.
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Decimal digits of n!, from log10 with compensated summation (independent of any big-integer code).
fn factorial_digits(n: u64) -> u64 {
    let (mut sum, mut carry) = (0.0f64, 0.0f64);
    for k in 2..=n {
        let y = (k as f64).log10() - carry;
        let t = sum + y;
        carry = (t - sum) - y;
        sum = t;
    }
    sum.floor() as u64 + 1
}

fn status(job: &Value) -> &str {
    job["status"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_computes_shows_progress_resumes_after_reload_and_cancels() {
    let browser = Browser::start().await;

    let mut env = TestEnv::new();
    env.backend.max_n = LONG_N + 1;
    let mut settings = env.server_settings();
    // The page gets every result in full: LONG_N! has 18 million digits, more than the default
    // per-socket buffer would let through at once.
    settings.socket_buffer_bytes = 64 * 1024 * 1024;
    let server = env.spawn_server_with(settings).await;
    let _worker = env.spawn_worker(2).await;

    browser.open(&server.http_url("/")).await;
    browser.until_connected().await;

    // A small job: its result, digit count and digits, then copy and download of the full output.
    let small = browser.submit(20).await;
    let job = browser
        .until("20! to be done", |jobs| {
            jobs.iter()
                .find(|j| j["id"] == small.as_str() && status(j) == "done")
                .cloned()
        })
        .await;
    assert_eq!(job["digits"], "19", "{job:#?}");
    assert_eq!(job["preview"], "2432902008176640000", "{job:#?}");
    assert_eq!(job["errors"], json!([]), "{job:#?}");
    browser.click(&small, "copy").await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = browser.clipboard().await;
        if text == "2432902008176640000" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the clipboard holds {text} after Copy; the page shows {:#?}",
            browser.job(&small).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    browser.click(&small, "download").await;
    let file = browser.downloads.join("factorial-20.txt");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while std::fs::read_to_string(&file).ok().as_deref() != Some("2432902008176640000") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} did not arrive with 20!'s digits (downloads: {:?})",
            file.display(),
            std::fs::read_dir(&browser.downloads)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A job the server refuses: the error is shown with the job it concerns.
    let too_large = (LONG_N + 2).to_string();
    let field = browser.client.find(Locator::Id("n")).await.unwrap();
    field.clear().await.unwrap();
    field
        .send_keys(&format!("{too_large}{}", char::from(Key::Enter)))
        .await
        .unwrap();
    let refused = browser
        .until("the too-large job to be refused", |jobs| {
            jobs.iter()
                .find(|j| j["n"] == too_large.as_str() && status(j) == "failed")
                .cloned()
        })
        .await;
    assert!(
        refused["errors"].as_array().is_some_and(|e| !e.is_empty()),
        "{refused:#?}"
    );

    // A long job: the bar moves forward with its phase named, a reload in the middle of it resumes it, and
    // it ends done with the right number of digits.
    let started = tokio::time::Instant::now();
    let long = browser.submit(LONG_N).await;
    let (f1, job) = browser
        .until("progress on the long job", |jobs| {
            jobs.iter()
                .find(|j| j["id"] == long.as_str() && status(j) == "running")
                .and_then(|j| {
                    j["fraction"]
                        .as_f64()
                        .filter(|f| *f > 0.0)
                        .map(|f| (f, j.clone()))
                })
        })
        .await;
    assert!(f1 <= 1.0, "{job:#?}");
    let (f2, job) = browser
        .until("the long job's progress to advance", |jobs| {
            jobs.iter()
                .find(|j| j["id"] == long.as_str() && status(j) == "running")
                .and_then(|j| {
                    j["fraction"]
                        .as_f64()
                        .filter(|f| *f > f1)
                        .map(|f| (f, j.clone()))
                })
        })
        .await;
    assert!(f2 > f1 && f2 <= 1.0, "{f1} then {job:#?}");
    eprintln!(
        "long job: progress {f1} then {f2}, {:?} after the submit",
        started.elapsed()
    );
    browser.screenshot("desktop-progress").await;
    let phase = job["phase"].as_str().unwrap_or_default();
    assert!(
        ["product", "decimal"].contains(&phase),
        "the phase is named: {job:#?}"
    );
    assert!(
        job["phase_text"]
            .as_str()
            .is_some_and(|t| !t.trim().is_empty()),
        "the phase is shown in words: {job:#?}"
    );
    assert!(
        job["buttons"]
            .as_array()
            .unwrap()
            .contains(&json!("cancel")),
        "a pending job has a cancel button: {job:#?}"
    );

    // Reloaded while the job runs (just seen): the page lists it from storage and resumes it on its new
    // socket, whether it still runs by then or has finished meanwhile.
    browser.client.refresh().await.unwrap();
    browser.until_connected().await;
    let mut seen = Vec::<String>::new();
    let done = browser
        .until("the long job to end after the reload", |jobs| {
            let job = jobs.iter().find(|j| j["id"] == long.as_str())?;
            let what = format!("{} {}", status(job), job["fraction"]);
            if seen.last() != Some(&what) {
                seen.push(what);
            }
            (status(job) != "queued" && status(job) != "running").then(|| job.clone())
        })
        .await;
    eprintln!(
        "long job after the reload: {}; ended {:?} after the submit",
        seen.join(", "),
        started.elapsed()
    );
    assert_eq!(status(&done), "done", "{done:#?}");
    assert_eq!(
        done["digits"],
        factorial_digits(LONG_N).to_string(),
        "{done:#?}"
    );
    // n! for large n ends in many zeros: the preview's tail shows them.
    assert!(
        done["preview"]
            .as_str()
            .is_some_and(|p| p.ends_with("00000000000000000000")),
        "{done:#?}"
    );

    // Another long job (a different n: the same one would come from the cache), cancelled while it runs.
    let doomed_n = LONG_N - 1;
    let doomed = browser.submit(doomed_n).await;
    browser
        .until("progress on the job to cancel", |jobs| {
            jobs.iter()
                .find(|j| j["id"] == doomed.as_str() && status(j) == "running")
                .and_then(|j| j["fraction"].as_f64().filter(|f| *f > 0.0))
        })
        .await;
    browser.phone(Some((390, 844))).await;
    browser.screenshot("phone-progress").await;
    // From the keyboard: the cancel button is a real button, so Enter on it works.
    browser
        .client
        .find(Locator::Css(&format!(
            "li.job[data-id='{doomed}'] .actions button.cancel"
        )))
        .await
        .expect("a pending job has a cancel button")
        .send_keys(&char::from(Key::Enter).to_string())
        .await
        .unwrap();
    let cancelled = browser
        .until("the job to end after its cancel", |jobs| {
            jobs.iter()
                .find(|j| {
                    j["id"] == doomed.as_str() && status(j) != "queued" && status(j) != "running"
                })
                .cloned()
        })
        .await;
    assert_eq!(status(&cancelled), "cancelled", "{cancelled:#?}");
    assert_eq!(cancelled["buttons"], json!([]), "{cancelled:#?}");
    assert_eq!(cancelled["errors"], json!([]), "{cancelled:#?}");
    browser.screenshot("phone-final").await;
    browser.phone(None).await;
    browser.screenshot("desktop-final").await;

    // Finished jobs stay listed across a reload.
    browser.client.refresh().await.unwrap();
    browser.until_connected().await;
    let after = browser.jobs().await;
    for (id, expected) in [(&small, "done"), (&long, "done"), (&doomed, "cancelled")] {
        let job = after
            .iter()
            .find(|j| j["id"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} is gone after a reload: {after:#?}"));
        assert_eq!(status(job), expected, "{job:#?}");
    }

    browser.close().await;
}
