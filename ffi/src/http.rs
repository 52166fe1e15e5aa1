//! Just enough HTTP/1.1 to talk to tailord: one request per connection
//! (`Connection: close`), over a Unix socket or TCP, with bodies framed by
//! Content-Length, chunked transfer coding or the end of the stream. The
//! daemon is the only peer, so there is no redirect, TLS or keep-alive.
//!
//! Every wait on the socket is bounded by the call's [`Limits`]: a
//! deadline for the whole call and a flag another thread may raise. Waits
//! are cut into slices of at most [`CANCEL_POLL`] while a flag is set up,
//! so a raised flag ends the call within one slice.

use crate::error::{FfiError, Result};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a blocked call looks at its cancel flag.
pub const CANCEL_POLL: Duration = Duration::from_millis(50);

/// What ends a call early.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// When the whole call must be over.
    pub deadline: Option<Instant>,
    /// Raised (by any thread) to stop the call.
    pub cancel: Option<Arc<AtomicBool>>,
}

/// Why a call was cut short: carried inside an `io::Error` through the
/// readers, and turned back into a status by [`FfiError::io`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Cut {
    /// The cancel flag was raised.
    #[error("cancelled by tailor_cancel_trigger")]
    Cancelled,
    /// The deadline passed.
    #[error("the call's deadline passed")]
    DeadlinePassed,
}

impl Limits {
    /// How long the next wait may block (`None`: without bound), or the
    /// reason the call ends now.
    fn next_wait(&self) -> std::io::Result<Option<Duration>> {
        if self.cancel.as_ref().is_some_and(|flag| flag.load(Ordering::Acquire)) {
            return Err(std::io::Error::other(Cut::Cancelled));
        }
        let left = match self.deadline {
            Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => return Err(std::io::Error::other(Cut::DeadlinePassed)),
            },
            None => None,
        };
        Ok(match (&self.cancel, left) {
            (Some(_), Some(left)) => Some(left.min(CANCEL_POLL)),
            (Some(_), None) => Some(CANCEL_POLL),
            (None, left) => left,
        })
    }
}

/// Where tailord listens.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// A Unix socket path.
    Unix(std::path::PathBuf),
    /// "host:port".
    Tcp(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
            Endpoint::Tcp(address) => write!(f, "http://{address}"),
        }
    }
}

/// A connected socket of either kind.
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

/// A connected socket whose every wait obeys the call's limits.
struct Socket {
    stream: Stream,
    limits: Limits,
}

impl Socket {
    /// Runs one socket operation, again after each slice of waiting that
    /// ended with neither data nor a reason to stop.
    fn bounded<T>(&mut self, mut operation: impl FnMut(&mut Stream) -> std::io::Result<T>) -> std::io::Result<T> {
        loop {
            let wait = self.limits.next_wait()?;
            match &self.stream {
                Stream::Unix(s) => s.set_read_timeout(wait).and_then(|_| s.set_write_timeout(wait))?,
                Stream::Tcp(s) => s.set_read_timeout(wait).and_then(|_| s.set_write_timeout(wait))?,
            }
            match operation(&mut self.stream) {
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
                outcome => return outcome,
            }
        }
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.bounded(|stream| match stream {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        })
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bounded(|stream| match stream {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        })
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.bounded(|stream| match stream {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
        })
    }
}

fn connect(endpoint: &Endpoint, limits: &Limits) -> Result<Socket> {
    limits.next_wait().map_err(FfiError::io("connecting"))?;
    let refused = |e: std::io::Error| FfiError::Connect(format!("cannot reach tailord at {endpoint}: {e}"));
    let stream = match endpoint {
        Endpoint::Unix(path) => Stream::Unix(UnixStream::connect(path).map_err(refused)?),
        Endpoint::Tcp(address) => Stream::Tcp(TcpStream::connect(address.as_str()).map_err(refused)?),
    };
    Ok(Socket { stream, limits: limits.clone() })
}

/// How the response body ends.
enum Framing {
    Length(u64),
    Chunked { left_in_chunk: u64, done: bool },
    UntilClose,
}

/// A response whose body is read as it arrives.
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    reader: BufReader<Socket>,
    framing: Framing,
}

/// Sends one request and reads the status line and headers.
pub fn request(
    endpoint: &Endpoint,
    limits: &Limits,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<Response> {
    let mut socket = connect(endpoint, limits)?;
    let mut message = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(token) = token {
        message.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    match body {
        Some(body) => {
            message.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()))
        }
        None if method != "GET" => message.push_str("Content-Length: 0\r\n"),
        None => {}
    }
    message.push_str("\r\n");
    let mut message = message.into_bytes();
    message.extend_from_slice(body.unwrap_or_default());
    if let Err(error) = socket.write_all(&message).and_then(|_| socket.flush()) {
        // A server may answer (an error, typically) and close before it has
        // read the whole body; its answer is still there to read.
        if !matches!(error.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) {
            return Err(FfiError::io("sending the request")(error));
        }
        return read_head(BufReader::new(socket)).map_err(|_| FfiError::io("sending the request")(error));
    }
    read_head(BufReader::new(socket))
}

fn read_head(mut reader: BufReader<Socket>) -> Result<Response> {
    let mut line = String::new();
    reader.read_line(&mut line).map_err(FfiError::io("reading the reply"))?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .filter(|_| line.starts_with("HTTP/1."))
        .ok_or_else(|| FfiError::Protocol(format!("not an HTTP status line: {:?}", line.trim_end())))?;
    let mut framing = Framing::UntilClose;
    loop {
        line.clear();
        let n = reader.read_line(&mut line).map_err(FfiError::io("reading the reply headers"))?;
        let header = line.trim_end();
        if n == 0 || header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let length = value.parse().map_err(|_| FfiError::Protocol(format!("bad Content-Length {value:?}")))?;
            framing = Framing::Length(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            framing = Framing::Chunked { left_in_chunk: 0, done: false };
        }
    }
    Ok(Response { status, reader, framing })
}

impl Response {
    /// The whole body as text.
    pub fn text(mut self) -> Result<String> {
        let mut body = Vec::new();
        self.read_to_end(&mut body).map_err(FfiError::io("reading the reply body"))?;
        String::from_utf8(body).map_err(|_| FfiError::Protocol("the reply body is not UTF-8".into()))
    }

    /// Reads the size line of the next chunk; 0 marks the end.
    fn next_chunk_size(&mut self) -> std::io::Result<u64> {
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        if line.trim().is_empty() {
            // The CRLF that closes the previous chunk's data.
            line.clear();
            self.reader.read_line(&mut line)?;
        }
        let digits = line.trim().split(';').next().unwrap_or("");
        u64::from_str_radix(digits, 16).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad chunk size line {:?}", line.trim_end()))
        })
    }
}

impl Read for Response {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.framing {
            Framing::UntilClose => self.reader.read(buf),
            Framing::Length(0) => Ok(0),
            Framing::Length(left) => {
                let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = self.reader.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                self.framing = Framing::Length(left - n as u64);
                Ok(n)
            }
            Framing::Chunked { done: true, .. } => Ok(0),
            Framing::Chunked { left_in_chunk: 0, .. } => {
                let size = self.next_chunk_size()?;
                self.framing = Framing::Chunked { left_in_chunk: size, done: size == 0 };
                if size == 0 {
                    return Ok(0);
                }
                self.read(buf)
            }
            Framing::Chunked { left_in_chunk, .. } => {
                let want = buf.len().min(usize::try_from(left_in_chunk).unwrap_or(usize::MAX));
                let n = self.reader.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                self.framing = Framing::Chunked { left_in_chunk: left_in_chunk - n as u64, done: false };
                Ok(n)
            }
        }
    }
}
