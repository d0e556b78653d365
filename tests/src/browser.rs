//! Headless Chromium for the HTML report's end-to-end tests: open a page
//! from disk, let its scripts run, and read back the DOM as rendered, the
//! errors the page raised, and a screenshot.
//!
//! Chromium is Debian's `chromium` package. When it is missing and we are
//! root it is installed with apt-get; when it cannot be had the test
//! panics saying so (a browser test never passes without a browser).

use std::{
    env, fs,
    io::Read,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

/// A page as the browser left it.
pub struct Rendered {
    /// The DOM serialized after the page's scripts ran.
    pub dom: String,
    /// Console errors and uncaught exceptions from the page, as Chromium
    /// logged them, then what the page's own error capture collected
    /// (`<html data-errors>`, `<pre id="page-errors">`).
    pub console_errors: Vec<String>,
    pub screenshot: PathBuf,
}

/// How long one Chromium run may take before it is killed.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Opens `html` (a local file) in headless Chromium, waits for its scripts,
/// returns the DOM as rendered (after the scripts ran), the console errors,
/// and saves a PNG screenshot at `screenshot`.
pub fn render(html: &Path, screenshot: &Path) -> Rendered {
    let chromium = chromium();
    let html = fs::canonicalize(html).unwrap_or_else(|e| panic!("{}: {e}", html.display()));
    let url = format!("file://{}", html.display());
    let (dom, log) = run(
        chromium,
        &[
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ],
        &url,
    );
    let _ = fs::remove_file(screenshot);
    let screenshot_arg = format!("--screenshot={}", screenshot.display());
    let (_, shot_log) = run(
        chromium,
        &[
            &screenshot_arg,
            "--window-size=1400,2000",
            "--hide-scrollbars",
            "--virtual-time-budget=5000",
        ],
        &url,
    );
    assert!(
        screenshot.is_file(),
        "chromium wrote no screenshot at {}:\n{shot_log}",
        screenshot.display()
    );
    let mut console_errors = console_errors(&log);
    console_errors.extend(page_errors(&dom));
    Rendered {
        dom,
        console_errors,
        screenshot: screenshot.to_path_buf(),
    }
}

/// The Chromium binary, installed first if need be (once per test binary).
fn chromium() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = find_chromium() {
            return bin;
        }
        crate::apt_install("chromium", true, "the HTML report tests need a browser");
        find_chromium().expect("apt-get installed chromium, but there is no chromium binary")
    })
}

fn find_chromium() -> Option<PathBuf> {
    let fixed = Path::new("/usr/bin/chromium");
    if fixed.is_file() {
        return Some(fixed.to_path_buf());
    }
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join("chromium"))
        .find(|p| p.is_file())
}

/// Runs Chromium headless on `url` with a throwaway profile; returns its
/// stdout and stderr. Killed after [`TIMEOUT`].
fn run(chromium: &Path, args: &[&str], url: &str) -> (String, String) {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let profile = env::temp_dir().join(format!("fdtrace-chromium-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&profile);
    fs::create_dir_all(&profile).expect("create chromium profile dir");
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--allow-file-access-from-files",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", chromium.display()));
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let finished = wait(&mut child);
    let stdout = stdout.join().expect("read chromium stdout");
    let stderr = stderr.join().expect("read chromium stderr");
    let _ = fs::remove_dir_all(&profile);
    assert!(
        finished,
        "chromium did not finish within {TIMEOUT:?} on {url}; killed it. stderr:\n{stderr}"
    );
    (stdout, stderr)
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Waits for `child` up to [`TIMEOUT`]; kills it (and says so) after.
fn wait(child: &mut Child) -> bool {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(_)) => return true,
            Ok(None) => thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("wait for chromium: {e}"),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// The page's console messages and uncaught exceptions in Chromium's log,
/// lines like `[..:INFO:CONSOLE:12] "Uncaught ReferenceError: x", source:
/// file:///...`. Chromium logs every console level alike, so a
/// `console.log` counts too: the report's page logs nothing.
fn console_errors(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught"))
        .map(str::to_owned)
        .collect()
}

/// What the page's own capture put into the DOM: `data-errors` on the
/// `<html>` element (one message per line), and `<pre id="page-errors">`.
/// Only those two places: text elsewhere in the page may say anything.
fn page_errors(dom: &str) -> Vec<String> {
    let mut found = String::new();
    let html_tag = dom
        .find("<html")
        .map_or("", |i| &dom[i..i + dom[i..].find('>').unwrap_or(0)]);
    if let Some(i) = html_tag.find(" data-errors=\"") {
        let value = &html_tag[i + " data-errors=\"".len()..];
        found.push_str(&value[..value.find('"').unwrap_or(value.len())]);
        found.push('\n');
    }
    if let Some(i) = dom.find("<pre id=\"page-errors\"") {
        let body = &dom[i..];
        let start = body.find('>').map_or(body.len(), |j| j + 1);
        let end = body.find("</pre>").unwrap_or(body.len()).max(start);
        found.push_str(&body[start..end]);
    }
    unescape(&found)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// Undoes the escaping Chromium's DOM serializer does.
fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}
