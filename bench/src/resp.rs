//! The load generator's Redis client for the measured path: one connection driven by one
//! task, which writes a round of commands in one `write` (pipelined, as `redis-benchmark -P`
//! does) and reads their replies in order. Commands are RESP arrays of bulk strings; replies
//! are read as integers (what the reservation script returns) or errors.
//!
//! It is the Redis twin of [`crate::wire`]: the peers are measured with clients of the same
//! weight, each costing little CPU next to the server it shares the cores with.

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest reply line accepted (an error message).
const MAX_LINE: usize = 64 * 1024;

/// One Redis connection.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    out: Vec<u8>,
    /// Commands written into `out` and not yet answered.
    pending: usize,
    /// Arguments announced by [`Conn::command`] and not yet added (over the whole round).
    owed: usize,
    buf: Vec<u8>,
    /// Unread bytes: `buf[pos..filled]`.
    pos: usize,
    filled: usize,
}

impl Conn {
    /// Connects (TCP_NODELAY) to `addr`.
    pub async fn connect(addr: SocketAddr) -> Result<Conn, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("redis {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Conn {
            stream,
            out: Vec::with_capacity(4096),
            pending: 0,
            owed: 0,
            buf: vec![0; 16 * 1024],
            pos: 0,
            filled: 0,
        })
    }

    /// Starts a command of `args` arguments (the command's name first) in the round; its
    /// arguments follow with [`Conn::arg`] and [`Conn::int`].
    pub fn command(&mut self, args: usize) {
        self.owed += args;
        self.out.push(b'*');
        self.out
            .extend_from_slice(itoa::Buffer::new().format(args).as_bytes());
        self.out.extend_from_slice(b"\r\n");
        self.pending += 1;
    }

    /// One argument of the current command.
    pub fn arg(&mut self, a: &[u8]) {
        self.owed = self.owed.wrapping_sub(1);
        self.out.push(b'$');
        self.out
            .extend_from_slice(itoa::Buffer::new().format(a.len()).as_bytes());
        self.out.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(a);
        self.out.extend_from_slice(b"\r\n");
    }

    /// An integer argument, as Redis takes it (decimal text).
    pub fn int(&mut self, v: i64) {
        self.arg(itoa::Buffer::new().format(v).as_bytes());
    }

    /// Writes the round and reads one integer reply per command, in order. An error reply
    /// (`-NOSCRIPT ...`, `-ERR ...`) fails the round with its message.
    pub async fn integers(&mut self, out: &mut Vec<i64>) -> Result<(), String> {
        if self.owed != 0 {
            self.out.clear();
            self.pending = 0;
            self.owed = 0;
            return Err("redis: a command with fewer or more arguments than it announced".into());
        }
        let n = std::mem::take(&mut self.pending);
        self.stream
            .write_all(&self.out)
            .await
            .map_err(|e| format!("redis write: {e}"))?;
        self.out.clear();
        let mut failed = None;
        for _ in 0..n {
            // Every reply is read, even after an error, so the connection stays in step.
            match self.integer().await? {
                Ok(v) => out.push(v),
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// One reply: an integer, or the server's error message.
    async fn integer(&mut self) -> Result<Result<i64, String>, String> {
        let range = self.line().await?;
        let line = &self.buf[range];
        let (kind, rest) = line.split_first().ok_or("redis: an empty reply line")?;
        match kind {
            b':' => std::str::from_utf8(rest)
                .ok()
                .and_then(|t| t.parse::<i64>().ok())
                .map(Ok)
                .ok_or_else(|| {
                    format!(
                        "redis: a bad integer reply {:?}",
                        String::from_utf8_lossy(rest)
                    )
                }),
            b'-' => Ok(Err(format!("redis: {}", String::from_utf8_lossy(rest)))),
            _ => Err(format!(
                "redis: a reply of type {:?} where an integer was expected",
                char::from(*kind)
            )),
        }
    }

    /// Where the next reply line is in `buf`, without its CRLF (valid until the next read).
    async fn line(&mut self) -> Result<std::ops::Range<usize>, String> {
        loop {
            let unread = &self.buf[self.pos..self.filled];
            if let Some(i) = memchr::memmem::find(unread, b"\r\n") {
                let start = self.pos;
                self.pos += i + 2;
                return Ok(start..start + i);
            }
            if self.filled - self.pos >= MAX_LINE {
                return Err("redis: a reply line too long".into());
            }
            // Keep the unread part at the front, then read after it.
            self.buf.copy_within(self.pos..self.filled, 0);
            self.filled -= self.pos;
            self.pos = 0;
            if self.filled == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
            let got = self
                .stream
                .read(&mut self.buf[self.filled..])
                .await
                .map_err(|e| format!("redis read: {e}"))?;
            if got == 0 {
                return Err("redis closed the connection".into());
            }
            self.filled += got;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that reads `expect` bytes of commands, then writes `reply` in pieces of 2.
    async fn server(
        expect: usize,
        reply: &'static [u8],
    ) -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let h = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut got = vec![0u8; expect];
            s.read_exact(&mut got).await.unwrap();
            for c in reply.chunks(2) {
                s.write_all(c).await.unwrap();
                tokio::task::yield_now().await;
            }
            got
        });
        (addr, h)
    }

    #[tokio::test]
    async fn a_round_is_resp_arrays_in_one_write_and_its_replies_are_read_in_order() {
        let want: &[u8] =
            b"*3\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n1\r\n*2\r\n$3\r\nGET\r\n$0\r\n\r\n";
        let (addr, h) = server(want.len(), b":1\r\n:-12\r\n").await;
        let mut c = Conn::connect(addr).await.unwrap();
        c.command(3);
        c.arg(b"EVALSHA");
        c.arg(b"ab");
        c.int(1);
        c.command(2);
        c.arg(b"GET");
        c.arg(b"");
        let mut out = Vec::new();
        c.integers(&mut out).await.unwrap();
        assert_eq!(out, vec![1, -12]);
        assert_eq!(h.await.unwrap(), want);
    }

    #[tokio::test]
    async fn an_error_reply_fails_the_round_after_every_reply_is_read() {
        let (addr, h) = server(22, b"-NOSCRIPT No matching script\r\n:0\r\n").await;
        let mut c = Conn::connect(addr).await.unwrap();
        for _ in 0..2 {
            c.command(1);
            c.arg(b"X");
        }
        let mut out = Vec::new();
        let e = c.integers(&mut out).await.unwrap_err();
        assert_eq!(e, "redis: NOSCRIPT No matching script");
        // The second reply was read too: the connection stays in step.
        assert_eq!(out, vec![0]);
        h.await.unwrap();
        // Another type where an integer is expected, and a closed connection.
        let (addr, h) = server(11, b"$1\r\nx\r\n").await;
        let mut c = Conn::connect(addr).await.unwrap();
        c.command(1);
        c.arg(b"X");
        let e = c.integers(&mut out).await.unwrap_err();
        assert!(e.contains("type '$'"), "{e}");
        h.await.unwrap();
        let (addr, h) = server(11, b":1").await;
        let mut c = Conn::connect(addr).await.unwrap();
        c.command(1);
        c.arg(b"X");
        let e = c.integers(&mut out).await.unwrap_err();
        assert!(e.contains("closed"), "{e}");
        h.await.unwrap();
    }

    #[tokio::test]
    async fn a_command_with_the_wrong_argument_count_is_not_sent() {
        let (addr, h) = server(0, b"").await;
        let mut c = Conn::connect(addr).await.unwrap();
        c.command(3);
        c.arg(b"GET");
        let mut out = Vec::new();
        let e = c.integers(&mut out).await.unwrap_err();
        assert!(e.contains("arguments"), "{e}");
        assert!(c.out.is_empty() && c.pending == 0);
        drop(c);
        h.await.unwrap();
    }
}
