//! The load generator's HTTP/1.1 client: one keep-alive connection, one request in flight,
//! driven by the task that sends on it. A request is written with one `write` (head and body
//! in one buffer); the answer is read into a reused buffer and its head parsed by `httparse`
//! (the parser hyper uses), with a `Content-Length` or a chunked body.
//!
//! The client shares the machine's cores with the server it measures, so it does no more than
//! that: no second task per connection, no channel between a sender and a connection driver,
//! no header map. At 64 connections of single reservations on a 2 vCPU machine, hyper's client
//! used 11 µs of CPU per request (63 % of a core at 56,757/s) and this one 8 µs (48 % at
//! 58,190/s), most of it the kernel's loopback TCP; the server used about 20 µs.

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Most bytes of an answer's head, and most headers in it.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 32;
/// Largest answer body accepted (a `/v1/batch` of 1,000 results is well below it).
const MAX_BODY: usize = 64 * 1024 * 1024;

/// An answer: its status and body (borrowed from the connection until the next request).
#[derive(Debug, PartialEq, Eq)]
pub struct Answer<'a> {
    pub status: u16,
    pub body: &'a [u8],
}

/// One HTTP/1.1 keep-alive connection.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    /// `host` and `authorization` lines, written into every request.
    fixed: Vec<u8>,
    out: Vec<u8>,
    /// Bytes read and not yet consumed: `buf[..filled]`.
    buf: Vec<u8>,
    filled: usize,
    /// A chunked body, decoded.
    chunked: Vec<u8>,
    /// The server said `Connection: close` (or the stream ended): no further request.
    closed: bool,
}

/// How an answer's body is delimited.
enum Framing {
    Length(usize),
    Chunked,
}

impl Conn {
    /// Connects (TCP_NODELAY); `bearer` goes into every request's `Authorization`.
    pub async fn connect(addr: SocketAddr, bearer: &str) -> Result<Conn, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        if bearer.bytes().any(|b| b == b'\r' || b == b'\n') {
            return Err("a key with a line break".into());
        }
        let fixed = format!("host: {addr}\r\nauthorization: Bearer {bearer}\r\n").into_bytes();
        Ok(Conn {
            stream,
            fixed,
            out: Vec::with_capacity(1024),
            buf: vec![0; 16 * 1024],
            filled: 0,
            chunked: Vec::new(),
            closed: false,
        })
    }

    /// Sends one request (`idem`: its `Idempotency-Key`; a non-empty body is JSON) and reads
    /// the whole answer.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        idem: Option<&str>,
        body: &[u8],
    ) -> Result<Answer<'_>, String> {
        if self.closed {
            return Err("the server closed the connection".into());
        }
        let splits_line = |s: &str| s.bytes().any(|b| b == b'\r' || b == b'\n' || b == b' ');
        if splits_line(method) || splits_line(path) || idem.is_some_and(splits_line) {
            return Err("a method, path or key with a space or line break".into());
        }
        // The answer to HEAD has a length and no body: this reader would wait for the body.
        if method.eq_ignore_ascii_case("HEAD") {
            return Err("HEAD is not supported by this client".into());
        }
        self.out.clear();
        self.out.extend_from_slice(method.as_bytes());
        self.out.push(b' ');
        self.out.extend_from_slice(path.as_bytes());
        self.out.extend_from_slice(b" HTTP/1.1\r\n");
        self.out.extend_from_slice(&self.fixed);
        if let Some(k) = idem {
            self.out.extend_from_slice(b"idempotency-key: ");
            self.out.extend_from_slice(k.as_bytes());
            self.out.extend_from_slice(b"\r\n");
        }
        if !body.is_empty() {
            self.out
                .extend_from_slice(b"content-type: application/json\r\n");
        }
        self.out.extend_from_slice(b"content-length: ");
        self.out
            .extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        self.out.extend_from_slice(b"\r\n\r\n");
        self.out.extend_from_slice(body);
        if let Err(e) = self.stream.write_all(&self.out).await {
            self.closed = true;
            return Err(format!("write: {e}"));
        }
        match self.read_answer().await {
            Ok((status, range, chunked)) => Ok(Answer {
                status,
                body: if chunked {
                    &self.chunked
                } else {
                    &self.buf[range]
                },
            }),
            Err(e) => {
                self.closed = true;
                Err(e)
            }
        }
    }

    /// Reads more bytes after `buf[..filled]`, growing the buffer when it is full.
    async fn fill(&mut self) -> Result<(), String> {
        if self.filled == self.buf.len() {
            let grown = (self.buf.len() * 2).min(MAX_HEAD + MAX_BODY);
            if grown == self.buf.len() {
                return Err("an answer larger than the client accepts".into());
            }
            self.buf.resize(grown, 0);
        }
        let n = self
            .stream
            .read(&mut self.buf[self.filled..])
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("the server closed the connection".into());
        }
        self.filled += n;
        Ok(())
    }

    /// Reads one answer: (status, its body's range in `buf`, or `true` when chunked and
    /// decoded into `chunked`). The buffer starts empty for every answer: with one request in
    /// flight, a byte after an answer is the server's error.
    async fn read_answer(&mut self) -> Result<(u16, std::ops::Range<usize>, bool), String> {
        self.filled = 0;
        let (status, head_len, framing, close) = loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut res = httparse::Response::new(&mut headers);
            match res.parse(&self.buf[..self.filled]) {
                Ok(httparse::Status::Complete(n)) => {
                    let status = res.code.unwrap_or(0);
                    let (framing, close) = framing_of(res.headers)?;
                    break (status, n, framing, close);
                }
                Ok(httparse::Status::Partial) if self.filled < MAX_HEAD => self.fill().await?,
                Ok(httparse::Status::Partial) => return Err("an answer head too large".into()),
                Err(e) => return Err(format!("bad answer head: {e}")),
            }
        };
        if close {
            self.closed = true;
        }
        match framing {
            Framing::Length(len) => {
                if len > MAX_BODY {
                    return Err(format!("an answer body of {len} bytes"));
                }
                let end = head_len + len;
                if self.buf.len() < end {
                    self.buf.resize(end, 0);
                }
                while self.filled < end {
                    self.fill().await?;
                }
                if self.filled > end {
                    return Err("bytes after the answer (one request was in flight)".into());
                }
                Ok((status, head_len..end, false))
            }
            Framing::Chunked => {
                self.chunked.clear();
                let mut at = head_len;
                loop {
                    match httparse::parse_chunk_size(&self.buf[at..self.filled]) {
                        Ok(httparse::Status::Complete((n, size))) => {
                            let size = usize::try_from(size)
                                .ok()
                                .filter(|&s| self.chunked.len() + s <= MAX_BODY)
                                .ok_or("an answer body larger than the client accepts")?;
                            // The chunk, its CRLF (and for the last, the empty trailer's CRLF).
                            let need = at + n + size + 2;
                            while self.filled < need {
                                self.fill().await?;
                            }
                            if &self.buf[need - 2..need] != b"\r\n" {
                                return Err("a chunk without its line break".into());
                            }
                            self.chunked
                                .extend_from_slice(&self.buf[at + n..at + n + size]);
                            at = need;
                            if size == 0 {
                                if self.filled > at {
                                    return Err("trailers or bytes after the answer".into());
                                }
                                return Ok((status, 0..0, true));
                            }
                        }
                        Ok(httparse::Status::Partial) => self.fill().await?,
                        Err(_) => return Err("a bad chunk size".into()),
                    }
                }
            }
        }
    }
}

/// The body's framing and whether the server closes the connection after this answer.
fn framing_of(headers: &[httparse::Header<'_>]) -> Result<(Framing, bool), String> {
    let mut length = None;
    let mut chunked = false;
    let mut close = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or("a bad Content-Length")?;
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if !h.value.eq_ignore_ascii_case(b"chunked") {
                return Err("a transfer encoding other than chunked".into());
            }
            chunked = true;
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = h.value.eq_ignore_ascii_case(b"close");
        }
    }
    // Chunked wins over a length (RFC 9112, 6.3); an answer with neither (a 204, a 304) has
    // no body.
    let framing = if chunked {
        Framing::Chunked
    } else {
        Framing::Length(length.unwrap_or(0))
    };
    Ok((framing, close))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that reads each request whole (by its `content-length`), records it, and
    /// writes the next canned answer in pieces of `piece` bytes.
    async fn server(
        answers: Vec<Vec<u8>>,
        piece: usize,
    ) -> (SocketAddr, tokio::task::JoinHandle<Vec<Vec<u8>>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let h = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buf = Vec::new();
            for answer in answers {
                let req = loop {
                    if let Some(end) = memchr::memmem::find(&buf, b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .map_or(0, |v| v.parse().unwrap());
                        if buf.len() >= end + 4 + len {
                            break buf.drain(..end + 4 + len).collect::<Vec<u8>>();
                        }
                    }
                    let mut b = [0u8; 4096];
                    let n = s.read(&mut b).await.unwrap();
                    if n == 0 {
                        return seen;
                    }
                    buf.extend_from_slice(&b[..n]);
                };
                seen.push(req);
                for c in answer.chunks(piece) {
                    s.write_all(c).await.unwrap();
                    s.flush().await.unwrap();
                    tokio::task::yield_now().await;
                }
            }
            seen
        });
        (addr, h)
    }

    #[tokio::test]
    async fn requests_are_http_1_1_and_answers_are_read_by_length_or_chunks() {
        let big = vec![b'x'; 100_000];
        let mut long = b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n".to_vec();
        long.extend_from_slice(&big);
        let answers = vec![
            b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n{\"ok\":1}\n".to_vec(),
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n".to_vec(),
            b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
            long,
            b"HTTP/1.1 409 Conflict\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}".to_vec(),
        ];
        // Answers arrive 3 bytes at a time: every partial state of head, length and chunk.
        let (addr, h) = server(answers, 3).await;
        let mut c = Conn::connect(addr, "k-1").await.unwrap();
        let a = c
            .request("POST", "/v1/reservations", Some("r7"), b"{\"a\":1}")
            .await
            .unwrap();
        assert_eq!((a.status, a.body), (201, &b"{\"ok\":1}\n"[..]));
        let a = c
            .request("GET", "/v1/stock/sku-1", None, b"")
            .await
            .unwrap();
        assert_eq!((a.status, a.body), (200, &b"hello, world"[..]));
        let a = c.request("DELETE", "/v1/x", None, b"").await.unwrap();
        assert_eq!((a.status, a.body), (204, &b""[..]));
        let a = c.request("GET", "/big", None, b"").await.unwrap();
        assert_eq!((a.status, a.body.len()), (200, 100_000));
        assert!(a.body.iter().all(|&b| b == b'x'));
        let a = c.request("GET", "/last", None, b"").await.unwrap();
        assert_eq!((a.status, a.body), (409, &b"{}"[..]));
        // The server said it closes: no request is sent after that.
        let e = c.request("GET", "/after", None, b"").await.unwrap_err();
        assert!(e.contains("closed"), "{e}");
        let seen = h.await.unwrap();
        assert_eq!(seen.len(), 5);
        assert_eq!(
            String::from_utf8_lossy(&seen[0]),
            format!(
                "POST /v1/reservations HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer k-1\r\n\
                 idempotency-key: r7\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n{{\"a\":1}}"
            )
        );
        assert!(String::from_utf8_lossy(&seen[1]).ends_with("content-length: 0\r\n\r\n"));
    }

    #[tokio::test]
    async fn a_bad_answer_is_an_error_and_the_connection_is_not_used_again() {
        for (answer, want) in [
            (&b"HTTP/1.1 2x0 OK\r\n\r\n"[..], "bad answer head"),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: ten\r\n\r\n",
                "Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
                "transfer encoding",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                "chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabXY",
                "line break",
            ),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab", "closed"),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nab",
                "bytes after",
            ),
        ] {
            let (addr, h) = server(vec![answer.to_vec()], 64).await;
            let mut c = Conn::connect(addr, "k").await.unwrap();
            // The server closes after its answer: a short body ends in "closed".
            let e = c.request("GET", "/", None, b"").await.unwrap_err();
            assert!(
                e.contains(want),
                "{e:?} for {:?}",
                String::from_utf8_lossy(answer)
            );
            let e = c.request("GET", "/", None, b"").await.unwrap_err();
            assert!(e.contains("closed"), "{e}");
            h.await.unwrap();
        }
        let (addr, h) = server(vec![], 1).await;
        let mut c = Conn::connect(addr, "k").await.unwrap();
        let e = c.request("GET", "/a b", None, b"").await.unwrap_err();
        assert!(e.contains("space"), "{e}");
        let e = c
            .request("GET", "/", Some("a\r\nx: y"), b"")
            .await
            .unwrap_err();
        assert!(e.contains("line break"), "{e}");
        let e = c.request("HEAD", "/", None, b"").await.unwrap_err();
        assert!(e.contains("HEAD"), "{e}");
        assert!(Conn::connect(addr, "a\nb").await.is_err());
        drop(c);
        h.await.unwrap();
    }
}
