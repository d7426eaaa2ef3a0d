//! One TCP connection as the protocol clients see it: timed connect and writes, and a
//! buffered line reader with a named maximum, every read under a deadline.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};

use crate::error::ConnError;

/// Longest line accepted from a server (SMTP replies are ≤ 512, POP3 text lines ≤ 1000;
/// this leaves room for servers that are generous).
pub const LINE_BYTES_MAX: usize = 16 * 1024;
/// Read buffer size.
const READ_BUF_BYTES: usize = 64 * 1024;

/// A connected socket with its read buffer.
pub struct Conn {
    stream: TcpStream,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Deadline of one command (`--timeout`).
    pub timeout: Duration,
}

impl Conn {
    /// Connect within `timeout`, with Nagle off (commands are small and latency counts).
    pub async fn connect(
        addr: SocketAddr,
        timeout_per_command: Duration,
    ) -> Result<Conn, ConnError> {
        let stream = match timeout(timeout_per_command, TcpStream::connect(addr)).await {
            Err(_) => return Err(ConnError::Timeout { what: "connect" }),
            Ok(Err(source)) => {
                return Err(ConnError::Io {
                    what: "connect",
                    source,
                });
            }
            Ok(Ok(s)) => s,
        };
        stream.set_nodelay(true).map_err(|source| ConnError::Io {
            what: "set TCP_NODELAY",
            source,
        })?;
        Ok(Conn {
            stream,
            buf: vec![0u8; READ_BUF_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
            timeout: timeout_per_command,
        })
    }

    /// The deadline of a command issued now.
    pub fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }

    /// Write every byte before `deadline`.
    pub async fn write_all(
        &mut self,
        bytes: &[u8],
        deadline: Instant,
        what: &'static str,
    ) -> Result<(), ConnError> {
        match timeout_at(deadline, self.stream.write_all(bytes)).await {
            Err(_) => Err(ConnError::Timeout { what }),
            Ok(Err(source)) => Err(ConnError::Io { what, source }),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// The next line, LF included, valid until the next read.
    pub async fn read_line(
        &mut self,
        deadline: Instant,
        what: &'static str,
    ) -> Result<&[u8], ConnError> {
        let mut scanned = self.start;
        loop {
            if let Some(pos) = crate::message::find_byte(&self.buf[scanned..self.end], b'\n') {
                let line = self.start..scanned + pos + 1;
                self.start = line.end;
                return Ok(&self.buf[line]);
            }
            scanned = self.end;
            if self.end - self.start >= LINE_BYTES_MAX {
                return Err(ConnError::LineTooLong {
                    what,
                    limit_bytes: LINE_BYTES_MAX,
                });
            }
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
                scanned = 0;
            } else if self.end == self.buf.len() {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                scanned -= self.start;
                self.start = 0;
            }
            let read = timeout_at(deadline, self.stream.read(&mut self.buf[self.end..])).await;
            match read {
                Err(_) => return Err(ConnError::Timeout { what }),
                Ok(Err(source)) => return Err(ConnError::Io { what, source }),
                Ok(Ok(0)) => return Err(ConnError::Closed { what }),
                Ok(Ok(n)) => self.end += n,
            }
        }
    }
}
