//! Export stage of `fdtrace monitor`: the HTTP endpoint scrapers read.
//!
//! A deliberately small HTTP/1.1 server: `GET`/`HEAD` of `/metrics` and
//! `/healthz`, one request per connection, then close. fdtrace runs as root
//! and this port may face a network, so every cost a peer can impose is
//! bounded: the request head is at most [`MAX_HEAD`] bytes and must arrive
//! within [`HEAD_DEADLINE`], writing the answer gets [`WRITE_DEADLINE`], at
//! most [`MAX_CONNECTIONS`] are open at once, and the metrics text is encoded
//! once per snapshot however often it is scraped. No input panics and
//! nothing is logged per request.

use std::{
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::Semaphore,
    time::timeout,
};

use super::{metrics, snapshot::Snapshot};

/// The snapshot the monitor loop published last. The loop swaps the inner
/// `Arc`; a scrape clones it under the lock and encodes outside it.
pub type Latest = Arc<Mutex<Arc<Snapshot>>>;

/// Largest request head (request line and headers) read; past it, 431.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time a peer has to send the whole head; past it, 408.
pub const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// Time a peer has to take the answer, so a reader that stalls cannot hold
/// a connection slot.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// Connections served at once. The accept loop takes a slot before it
/// accepts, so further peers wait in the kernel's listen backlog (and
/// fdtrace never holds more than this many sockets for them) rather than
/// being refused.
pub const MAX_CONNECTIONS: usize = 64;
/// Pause after a failed accept (EMFILE, ENOBUFS, ...) before the next try.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// After answering, how long and how much a peer's unread input is drained,
/// so that closing does not reset the connection before it read the answer.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PLAIN: &str = "text/plain; charset=utf-8";

/// Binds the metrics endpoint, nonblocking so [`serve`] can adopt it.
///
/// Errors are one line that names the address; a port in use says to give
/// another with `--listen`.
pub fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr).map_err(|err| match err.kind() {
        io::ErrorKind::AddrInUse => anyhow::anyhow!(
            "cannot listen on {addr}: the address is already in use; \
             give another with --listen ADDR:PORT"
        ),
        _ => anyhow::anyhow!("cannot listen on {addr}: {err}"),
    })?;
    listener
        .set_nonblocking(true)
        .with_context(|| format!("make the listener on {addr} nonblocking"))?;
    Ok(listener)
}

/// Answers scrapes on `listener` with the snapshot in `latest`, forever.
///
/// Returns only if the listener cannot join the tokio runtime. Failed
/// accepts back off and retry. Dropping the future stops accepting;
/// connections already accepted finish on their own, within the deadlines.
pub async fn serve(listener: std::net::TcpListener, latest: Latest) -> anyhow::Result<()> {
    serve_with(listener, latest, HEAD_DEADLINE, MAX_CONNECTIONS).await
}

/// [`serve`] with its two main bounds given, so tests can shrink them.
async fn serve_with(
    listener: std::net::TcpListener,
    latest: Latest,
    head_deadline: Duration,
    connections: usize,
) -> anyhow::Result<()> {
    listener
        .set_nonblocking(true)
        .context("make the metrics listener nonblocking")?;
    let listener =
        tokio::net::TcpListener::from_std(listener).context("register the metrics listener")?;
    let slots = Arc::new(Semaphore::new(connections));
    let cache = Arc::new(Mutex::new(None));
    loop {
        // Never closed, so this cannot fail; if it did, stop rather than spin.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return Ok(());
        };
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let latest = Arc::clone(&latest);
                let cache = Arc::clone(&cache);
                tokio::spawn(async move {
                    connection(stream, &latest, &cache, head_deadline).await;
                    drop(slot);
                });
            }
            Err(_) => {
                drop(slot);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// The metrics text of the snapshot it was encoded from.
type Cache = Mutex<Option<(Arc<Snapshot>, Arc<str>)>>;

/// One connection: read the head, answer, close. I/O errors end it quietly.
async fn connection(mut stream: TcpStream, latest: &Latest, cache: &Cache, deadline: Duration) {
    let answer = match timeout(deadline, read_head(&mut stream)).await {
        Err(_elapsed) => Answer::error(REQUEST_TIMEOUT),
        Ok(Err(_) | Ok(Head::Empty)) => return,
        Ok(Ok(Head::TooLarge)) => Answer::error(HEAD_TOO_LARGE),
        Ok(Ok(Head::Truncated)) => Answer::error(BAD_REQUEST),
        Ok(Ok(Head::Complete(head))) => route(&head, || metrics_text(latest, cache)),
    };
    let written = timeout(WRITE_DEADLINE, async {
        stream.write_all(&answer.into_bytes()).await?;
        stream.shutdown().await
    })
    .await;
    if matches!(written, Ok(Ok(()))) {
        linger(&mut stream).await;
    }
}

/// Encodes the latest snapshot, or reuses the text of the last scrape if
/// the monitor loop has not published a new one since.
fn metrics_text(latest: &Latest, cache: &Cache) -> Arc<str> {
    // A poisoned lock still holds a whole `Arc`: use it.
    let snapshot = Arc::clone(&latest.lock().unwrap_or_else(|p| p.into_inner()));
    if let Some((seen, text)) = &*cache.lock().unwrap_or_else(|p| p.into_inner())
        && Arc::ptr_eq(seen, &snapshot)
    {
        return Arc::clone(text);
    }
    let text: Arc<str> = metrics::encode(&snapshot).into();
    *cache.lock().unwrap_or_else(|p| p.into_inner()) = Some((snapshot, Arc::clone(&text)));
    text
}

enum Head {
    /// The request line and headers, up to and including the blank line.
    Complete(Vec<u8>),
    /// [`MAX_HEAD`] bytes without the blank line that ends a head.
    TooLarge,
    /// The peer stopped sending partway through a head.
    Truncated,
    /// The peer closed without sending anything.
    Empty,
}

async fn read_head(stream: &mut TcpStream) -> io::Result<Head> {
    let mut buf = vec![0; MAX_HEAD];
    let mut len = 0;
    loop {
        let read = stream.read(&mut buf[len..]).await?;
        if read == 0 {
            return Ok(if len == 0 {
                Head::Empty
            } else {
                Head::Truncated
            });
        }
        // Only look at what is new (and the two bytes before it), so a peer
        // sending one byte at a time costs linear, not quadratic, time.
        let from = len.saturating_sub(2);
        len += read;
        if let Some(end) = head_end(&buf[from..len]) {
            buf.truncate(from + end);
            return Ok(Head::Complete(buf));
        }
        if len == MAX_HEAD {
            return Ok(Head::TooLarge);
        }
    }
}

/// Where the head in `bytes` ends: after the first empty line, `\r\n` or a
/// bare `\n` as RFC 9112 section 2.2 lets a server accept.
fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(2)
        .enumerate()
        .find_map(|(at, pair)| match pair {
            b"\n\n" => Some(at + 2),
            b"\n\r" if bytes.get(at + 2) == Some(&b'\n') => Some(at + 3),
            _ => None,
        })
}

/// The answer to a complete head; `metrics` runs only for a metrics request.
fn route(head: &[u8], metrics: impl FnOnce() -> Arc<str>) -> Answer {
    let Some((method, path)) = request_line(head) else {
        return Answer::error(BAD_REQUEST);
    };
    let head_only = match method {
        b"GET" => false,
        b"HEAD" => true,
        _ => return Answer::error(METHOD_NOT_ALLOWED),
    };
    let answer = match path {
        b"/metrics" => Answer::new(OK, OPENMETRICS, metrics()),
        b"/healthz" => Answer::new(OK, PLAIN, "ok\n".into()),
        _ => Answer::error(NOT_FOUND),
    };
    Answer {
        head_only,
        ..answer
    }
}

/// Method and path (query dropped) of a well-formed request line, else None.
fn request_line(head: &[u8]) -> Option<(&[u8], &[u8])> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&b| b == b' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    let is_token = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    let well_formed = parts.next().is_none()
        && !method.is_empty()
        && method.iter().all(is_token)
        && target.first() == Some(&b'/')
        && target.iter().all(u8::is_ascii_graphic)
        && matches!(version, b"HTTP/1.1" | b"HTTP/1.0");
    let path = target.split(|&b| b == b'?').next()?;
    well_formed.then_some((method, path))
}

/// A status code and its reason phrase.
type Status = (u16, &'static str);
const OK: Status = (200, "OK");
const BAD_REQUEST: Status = (400, "Bad Request");
const NOT_FOUND: Status = (404, "Not Found");
const METHOD_NOT_ALLOWED: Status = (405, "Method Not Allowed");
const REQUEST_TIMEOUT: Status = (408, "Request Timeout");
const HEAD_TOO_LARGE: Status = (431, "Request Header Fields Too Large");

/// A complete response: always a length, always `Connection: close`.
struct Answer {
    status: Status,
    content_type: &'static str,
    body: Arc<str>,
    /// Answering `HEAD`: the headers of the `GET` answer, no body.
    head_only: bool,
}

impl Answer {
    fn new(status: Status, content_type: &'static str, body: Arc<str>) -> Answer {
        let head_only = false;
        Answer {
            status,
            content_type,
            body,
            head_only,
        }
    }

    /// An error is its reason phrase as plain text.
    fn error(status: Status) -> Answer {
        Answer::new(status, PLAIN, format!("{}\n", status.1).into())
    }

    fn into_bytes(self) -> Vec<u8> {
        let ((code, reason), length) = (self.status, self.body.len());
        // RFC 9110 section 15.5.6: a 405 lists the methods that would work.
        let allow = if code == 405 {
            "Allow: GET, HEAD\r\n"
        } else {
            ""
        };
        let mut out = format!(
            "HTTP/1.1 {code} {reason}\r\nContent-Type: {}\r\nContent-Length: {length}\r\n\
             {allow}Connection: close\r\n\r\n",
            self.content_type,
        )
        .into_bytes();
        if !self.head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// Reads and drops what the peer still sends, briefly, until it closes.
async fn linger(stream: &mut TcpStream) {
    let _ = timeout(LINGER, async {
        let mut sink = [0; 4096];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(read) => drained += read,
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latest(traced_processes: u64) -> Latest {
        Arc::new(Mutex::new(Arc::new(Snapshot {
            traced_processes,
            ..Snapshot::default()
        })))
    }

    /// Serves `latest` on a fresh loopback port, as [`serve_with`].
    fn start(latest: Latest, head_deadline: Duration, connections: usize) -> SocketAddr {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = serve_with(listener, latest, head_deadline, connections);
        tokio::spawn(async move { serving.await.unwrap() });
        addr
    }

    /// Sends `request` on a new connection, ends the sending side, and
    /// returns all that comes back.
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        stream.shutdown().await.unwrap();
        read_all(stream).await
    }

    async fn read_all(mut stream: TcpStream) -> String {
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        String::from_utf8(answer).unwrap()
    }

    fn header<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
        let (head, _) = answer.split_once("\r\n\r\n")?;
        head.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
    }

    fn body(answer: &str) -> &str {
        answer.split_once("\r\n\r\n").unwrap().1
    }

    #[tokio::test]
    async fn metrics_and_health() {
        let addr = start(latest(3), HEAD_DEADLINE, MAX_CONNECTIONS);

        let answer = exchange(addr, b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert_eq!(header(&answer, "Content-Type"), Some(OPENMETRICS));
        assert_eq!(header(&answer, "Connection"), Some("close"));
        let text = metrics::encode(&latest(3).lock().unwrap());
        assert_eq!(body(&answer), text);
        assert!(text.contains("\nfdtrace_traced_processes 3\n"));
        let length = text.len().to_string();
        assert_eq!(header(&answer, "Content-Length"), Some(length.as_str()));

        let answer = exchange(addr, b"HEAD /metrics HTTP/1.0\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert_eq!(header(&answer, "Content-Length"), Some(length.as_str()));
        assert_eq!(body(&answer), "");

        let answer = exchange(addr, b"GET /healthz HTTP/1.1\n\n").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert_eq!(header(&answer, "Content-Type"), Some(PLAIN));
        assert_eq!(header(&answer, "Content-Length"), Some("3"));
        assert_eq!(body(&answer), "ok\n");
    }

    #[tokio::test]
    async fn a_new_snapshot_is_served_after_a_cached_one() {
        let latest = latest(1);
        let addr = start(Arc::clone(&latest), HEAD_DEADLINE, MAX_CONNECTIONS);
        let answer = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(answer.contains("\nfdtrace_traced_processes 1\n"));
        *latest.lock().unwrap() = Arc::new(Snapshot {
            traced_processes: 2,
            ..Snapshot::default()
        });
        let answer = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(answer.contains("\nfdtrace_traced_processes 2\n"));
    }

    #[tokio::test]
    async fn errors() {
        let addr = start(latest(0), HEAD_DEADLINE, MAX_CONNECTIONS);
        let status = |answer: &str| answer.lines().next().unwrap_or("").to_owned();

        let answer = exchange(addr, b"GET /nope HTTP/1.1\r\n\r\n").await;
        assert_eq!(status(&answer), "HTTP/1.1 404 Not Found");
        assert_eq!(header(&answer, "Connection"), Some("close"));
        assert_eq!(body(&answer), "Not Found\n");

        let answer = exchange(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(status(&answer), "HTTP/1.1 405 Method Not Allowed");
        assert_eq!(header(&answer, "Allow"), Some("GET, HEAD"));

        for garbage in [
            &b"garbage\r\n\r\n"[..],
            b"GET /metrics\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/2.0\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"G\xffT /metrics HTTP/1.1\r\n\r\n",
            b"GET /m\x00etrics HTTP/1.1\r\n\r\n",
            b"\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\n",
        ] {
            let answer = exchange(addr, garbage).await;
            assert_eq!(status(&answer), "HTTP/1.1 400 Bad Request", "{garbage:?}");
        }

        let mut oversized = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
        oversized.resize(3 * MAX_HEAD, b'a');
        oversized.extend_from_slice(b"\r\n\r\n");
        let answer = exchange(addr, &oversized).await;
        assert_eq!(
            status(&answer),
            "HTTP/1.1 431 Request Header Fields Too Large"
        );

        // Still serving after all that.
        let answer = exchange(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
        assert_eq!(body(&answer), "ok\n");
    }

    #[tokio::test]
    async fn a_silent_peer_gets_408_and_frees_its_slot() {
        let addr = start(latest(0), Duration::from_millis(50), 1);
        // Takes the only slot and holds it until its deadline.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        silent
            .write_all(b"GET /metrics HTTP/1.1\r\n")
            .await
            .unwrap();
        // Waits in the backlog rather than being refused.
        let next = tokio::spawn(exchange(addr, b"GET /healthz HTTP/1.1\r\n\r\n"));
        let answer = read_all(silent).await;
        assert!(
            answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{answer}"
        );
        assert_eq!(body(&next.await.unwrap()), "ok\n");
    }

    #[test]
    fn no_input_panics() {
        // A fixed xorshift stream, biased towards the bytes that matter.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let alphabet = b"GETHAD /?\r\n\x00\xffmetricshz1.P";
        for _ in 0..20_000 {
            let mut head = Vec::new();
            for _ in 0..state % 40 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let pick = usize::try_from(state).unwrap() % alphabet.len();
                head.push(alphabet[pick]);
            }
            let _ = head_end(&head);
            let answer = route(&head, || "m".into());
            assert!(matches!(answer.status.0, 200 | 400 | 404 | 405));
        }
    }

    #[test]
    fn request_lines() {
        assert_eq!(
            request_line(b"GET /metrics?a=b HTTP/1.1\r\n\r\n"),
            Some((&b"GET"[..], &b"/metrics"[..]))
        );
        assert_eq!(request_line(b"GET / HTTP/1.1 x\r\n\r\n"), None);
        assert_eq!(request_line(b""), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nrest"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn an_address_in_use_is_one_line_that_says_what_to_do() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind(addr).unwrap_err();
        let expected = format!(
            "cannot listen on {addr}: the address is already in use; \
             give another with --listen ADDR:PORT"
        );
        assert_eq!(format!("{err:#}"), expected);
        assert_eq!(err.to_string(), expected);
    }
}
