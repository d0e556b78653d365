//! A throwaway Prometheus for the `fdtrace monitor` end-to-end tests:
//! started on a free port of 127.0.0.1 with its own empty database, it
//! scrapes one target every second and answers PromQL queries, and it is
//! killed when dropped. Also here: reading what comes back, query results
//! ([`vector`], [`only_series`]) and exposition text ([`parse_metrics`]).
//!
//! Prometheus and promtool are Debian's `prometheus` package. When they
//! are missing and we are root they are installed with apt-get; when they
//! cannot be had the test panics saying so (a Prometheus test never passes
//! without Prometheus).
//!
//! Only std and serde_json: HTTP is a plain HTTP/1.0 GET over a
//! `TcpStream`, which both Prometheus and fdtrace answer.

use std::{
    collections::BTreeMap,
    env,
    fmt::Write as _,
    fs::{self, File},
    io::{Read, Write},
    net::{TcpListener, TcpStream, ToSocketAddrs},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;

use crate::scratch_dir;

/// How long Prometheus may take to start answering `/-/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one HTTP exchange may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// One running Prometheus, killed on drop.
pub struct Prometheus {
    child: Child,
    address: String,
    log: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`host:port`, path `/metrics`)
    /// every second, and waits until it is ready.
    pub fn start(target: &str) -> Self {
        let binary = prometheus();
        let dir = scratch_dir("prometheus");
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: fdtrace\n    static_configs:\n      \
                 - targets: [\"{target}\"]\n"
            ),
        )
        .expect("write the prometheus config");
        let address = format!("127.0.0.1:{}", free_port());
        let log = dir.join("prometheus.log");
        // A file, not a pipe: Prometheus logs a lot, and a pipe nobody
        // reads would stop it once full.
        let log_file = File::create(&log).expect("create the prometheus log");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone the log file"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let mut prometheus = Self {
            child,
            address,
            log,
        };
        prometheus.wait_until_ready();
        prometheus
    }

    /// `host:port` Prometheus listens on.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// What Prometheus logged so far (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "prometheus exited ({status}) before it was ready:\n{}",
                    self.log()
                );
            }
            if let Ok((200, _)) = try_http_get(&self.address, "/-/ready") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus was not ready within {READY_TIMEOUT:?}:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// An instant query: the `data.result` of `/api/v1/query` (for a
    /// vector, an array of `{"metric": {..}, "value": [time, "value"]}`;
    /// for a range selector like `x[10m]`, the raw samples as in
    /// [`Prometheus::query_range`]).
    pub fn query(&self, promql: &str) -> Value {
        self.api(&format!("/api/v1/query?query={}", url_encode(promql)))
    }

    /// A range query over the last `seconds` seconds, one step a second:
    /// the `data.result` of `/api/v1/query_range`, an array of
    /// `{"metric": {..}, "values": [[time, "value"], ..]}`.
    pub fn query_range(&self, promql: &str, seconds: u64) -> Value {
        let end = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs_f64();
        let start = end - Duration::from_secs(seconds).as_secs_f64();
        self.api(&format!(
            "/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step=1",
            url_encode(promql)
        ))
    }

    /// The scrape targets' state: `data.activeTargets` of
    /// `/api/v1/targets` (health, lastError), for failure messages.
    pub fn targets(&self) -> Value {
        let (_, body) = http_get(&self.address, "/api/v1/targets");
        let response: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        response["data"]["activeTargets"].clone()
    }

    fn api(&self, path: &str) -> Value {
        let (status, body) = http_get(&self.address, path);
        let response: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("prometheus answered {path} with non-JSON ({e}): {body}"));
        assert!(
            status == 200 && response["status"] == "success",
            "prometheus refused {path} (HTTP {status}): {body}"
        );
        response["data"]["result"].clone()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// `GET path` from `address` (`host:port`): the status code and body.
/// Panics when the exchange fails.
pub fn http_get(address: &str, path: &str) -> (u16, String) {
    try_http_get(address, path).unwrap_or_else(|e| panic!("GET http://{address}{path}: {e}"))
}

/// `GET path` from `address` over HTTP/1.0: the status code and body.
pub fn try_http_get(address: &str, path: &str) -> Result<(u16, String), String> {
    let socket = address
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let mut stream =
        TcpStream::connect_timeout(&socket, HTTP_TIMEOUT).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(HTTP_TIMEOUT))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    let mut chunk = [0; 8192];
    // To the end of the stream, or of Content-Length when the server
    // keeps the connection open anyway.
    loop {
        let n = stream.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&chunk[..n]);
        if let Some((head, body)) = split_response(&bytes)
            && content_length(head).is_some_and(|len| body.len() >= len)
        {
            break;
        }
    }
    let (head, body) = split_response(&bytes).ok_or_else(|| {
        format!(
            "not an HTTP response: {:?}",
            String::from_utf8_lossy(&bytes)
        )
    })?;
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status line in {head:?}"))?;
    let body = match content_length(head) {
        Some(len) => &body[..len.min(body.len())],
        None => body,
    };
    Ok((status, String::from_utf8_lossy(body).into_owned()))
}

/// The head (as text) and the body of a response, once the head is whole.
fn split_response(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..end]).ok()?;
    Some((head, &bytes[end + 4..]))
}

fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if name.trim().eq_ignore_ascii_case("content-length") {
            value.trim().parse().ok()
        } else {
            None
        }
    })
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn url_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    encoded
}

/// The `prometheus` binary, installed first if need be.
pub fn prometheus() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| installed("prometheus"))
}

/// The `promtool` binary, installed first if need be.
pub fn promtool() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| installed("promtool"))
}

/// `name` from Debian's `prometheus` package, installing the package when
/// it is missing (once per test binary).
fn installed(name: &str) -> PathBuf {
    if let Some(bin) = find(name) {
        return bin;
    }
    install_package();
    find(name)
        .unwrap_or_else(|| panic!("apt-get installed prometheus, but there is no {name} binary"))
}

fn install_package() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        crate::apt_install(
            "prometheus",
            false,
            "the monitor tests need prometheus and promtool",
        );
    });
}

fn find(name: &str) -> Option<PathBuf> {
    let fixed = Path::new("/usr/bin").join(name);
    if fixed.is_file() {
        return Some(fixed);
    }
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

// Reading what Prometheus and fdtrace answer.

/// A series' labels, name to value.
pub type Labels = BTreeMap<String, String>;

/// (labels, value) of each series of an instant vector.
pub fn vector(result: &Value) -> Vec<(Labels, f64)> {
    let series = result.as_array().expect("a vector");
    series
        .iter()
        .map(|s| (labels(&s["metric"]), number(&s["value"][1])))
        .collect()
}

/// (labels, values) of each series of a range query's matrix.
pub fn matrix(result: &Value) -> Vec<(Labels, Vec<f64>)> {
    let series = result.as_array().expect("a matrix");
    series
        .iter()
        .map(|s| {
            let values = s["values"].as_array().expect("values");
            (
                labels(&s["metric"]),
                values.iter().map(|v| number(&v[1])).collect(),
            )
        })
        .collect()
}

/// The values of the one series a range query must return.
pub fn only_series(result: &Value, promql: &str) -> Vec<f64> {
    let mut series = matrix(result);
    assert!(
        series.len() == 1 && !series[0].1.is_empty(),
        "{promql} should be one series: {result}"
    );
    series.remove(0).1
}

fn labels(metric: &Value) -> Labels {
    metric
        .as_object()
        .expect("labels")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect()
}

/// Prometheus sends sample values as strings.
fn number(value: &Value) -> f64 {
    let text = value.as_str().expect("a sample value");
    text.parse()
        .unwrap_or_else(|e| panic!("sample value {text:?}: {e}"))
}

/// One sample of an OpenMetrics exposition: `name{labels} value`.
#[derive(Debug)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, empty when it has none.
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// The samples of an OpenMetrics text (comments and `# EOF` skipped).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| parse_sample(line).unwrap_or_else(|| panic!("bad sample line: {line}")))
        .collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut labels = Labels::new();
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices();
        let mut key = String::new();
        loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => {
                    rest = &after[i + 1..];
                    break;
                }
                ',' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                other => key.push(other),
            }
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_encoding_keeps_only_unreserved_characters() {
        assert_eq!(
            url_encode(r#"x{site=~"leak_one .*"} > 0"#),
            "x%7Bsite%3D~%22leak_one%20.%2A%22%7D%20%3E%200"
        );
    }

    #[test]
    fn responses_split_at_the_blank_line_and_honour_content_length() {
        let bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
        let (head, body) = split_response(bytes).unwrap();
        assert_eq!(content_length(head), Some(3));
        assert_eq!(body, b"ok\n");
    }

    #[test]
    fn samples_parse_with_escaped_labels() {
        let s =
            parse_sample(r#"fdtrace_site_open_fds{comm="a\"b",site="leak_one (fleet.c:21)"} 7"#)
                .unwrap();
        assert_eq!(s.name, "fdtrace_site_open_fds");
        assert_eq!(s.label("comm"), "a\"b");
        assert_eq!(s.label("site"), "leak_one (fleet.c:21)");
        assert_eq!(s.value, 7.0);
        assert_eq!(
            parse_sample("fdtrace_traced_processes 0").unwrap().value,
            0.0
        );
    }
}
