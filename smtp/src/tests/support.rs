//! Test doubles and helpers: an in-memory store, an SMTP test client, reply checks.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{Deliver, DeliverError, Envelope, RcptVerdict, SessionError, SmtpConfig, serve};

/// The local domain of the test store.
pub(crate) const LOCAL_DOMAIN: &str = "example.test";
/// Peer address given to in-memory sessions.
pub(crate) const PEER: &str = "192.0.2.1:40000";
/// Server name used by the tests.
pub(crate) const HOST: &str = "mx.porcupine.test";

/// How the test store's `deliver` should fail, if at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailMode {
    /// Return `DeliverError::Temporary`.
    Temporary,
    /// Return `DeliverError::Permanent`.
    Permanent,
    /// Return `DeliverError::OverQuota`.
    OverQuota,
}

/// In-memory store: knows alice, bob, postmaster and any `user*` at example.test,
/// answers TempFail for `tempfail@example.test`, OverQuota for `full@`, Unroutable for
/// `loop@`, denies relaying to other domains.
#[derive(Debug, Default)]
pub(crate) struct MemoryDeliver {
    deliveries: Mutex<Vec<(Envelope, Bytes)>>,
    checked: Mutex<Vec<String>>,
    fail: Mutex<Option<FailMode>>,
}

impl MemoryDeliver {
    /// Make every later `deliver` fail with `mode` (or succeed with `None`).
    pub(crate) fn fail_with(&self, mode: Option<FailMode>) {
        *self.fail.lock().unwrap() = mode;
    }

    /// Messages stored so far.
    pub(crate) fn deliveries(&self) -> Vec<(Envelope, Bytes)> {
        self.deliveries.lock().unwrap().clone()
    }

    /// Addresses `check_recipient` was asked about.
    pub(crate) fn checked(&self) -> Vec<String> {
        self.checked.lock().unwrap().clone()
    }
}

impl Deliver for MemoryDeliver {
    async fn check_recipient(&self, address: &str) -> RcptVerdict {
        self.checked.lock().unwrap().push(address.to_string());
        if address.eq_ignore_ascii_case("postmaster") {
            return RcptVerdict::Accept;
        }
        let Some((local, domain)) = address.rsplit_once('@') else {
            return RcptVerdict::UnknownUser;
        };
        if !domain.eq_ignore_ascii_case(LOCAL_DOMAIN) {
            return RcptVerdict::RelayDenied;
        }
        let local = local.to_ascii_lowercase();
        match local.as_str() {
            "alice" | "bob" => RcptVerdict::Accept,
            "tempfail" => RcptVerdict::TempFail("registry unavailable".to_string()),
            "full" => RcptVerdict::OverQuota("mailbox full".to_string()),
            "loop" => RcptVerdict::Unroutable("aliases nested too deep".to_string()),
            other if other.starts_with("user") => RcptVerdict::Accept,
            _ => RcptVerdict::UnknownUser,
        }
    }

    async fn deliver(&self, envelope: &Envelope, message: Bytes) -> Result<(), DeliverError> {
        let fail = *self.fail.lock().unwrap();
        match fail {
            Some(FailMode::Temporary) => Err(DeliverError::Temporary("store busy".to_string())),
            Some(FailMode::Permanent) => {
                Err(DeliverError::Permanent("mailbox disabled".to_string()))
            }
            Some(FailMode::OverQuota) => Err(DeliverError::OverQuota(
                "alice@example.test is over quota".to_string(),
            )),
            None => {
                self.deliveries
                    .lock()
                    .unwrap()
                    .push((envelope.clone(), message));
                Ok(())
            }
        }
    }
}

/// One SMTP reply as the client saw it.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    /// The three-digit code.
    pub(crate) code: String,
    /// The text of each line, after the code and separator.
    pub(crate) lines: Vec<String>,
}

impl Reply {
    /// The text of the last line.
    pub(crate) fn text(&self) -> &str {
        self.lines.last().map(String::as_str).unwrap_or("")
    }
}

/// Fail unless `reply` has `code`.
#[track_caller]
pub(crate) fn assert_code(reply: &Reply, code: &str) {
    assert_eq!(reply.code, code, "unexpected reply {reply:?}");
}

/// Fail unless `reply` has `code` and its last line starts with the enhanced code `esc`.
#[track_caller]
pub(crate) fn assert_reply(reply: &Reply, code: &str, esc: &str) {
    assert_code(reply, code);
    assert!(
        reply.text().starts_with(&format!("{esc} ")),
        "expected enhanced code {esc} in {reply:?}"
    );
}

/// A line-oriented SMTP client over any stream.
pub(crate) struct Client<S> {
    stream: S,
    input: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub(crate) fn new(stream: S) -> Self {
        Client {
            stream,
            input: Vec::new(),
        }
    }

    /// The stream, to switch it to TLS; fails if replies are left unread.
    pub(crate) fn into_inner(self) -> S {
        assert!(self.input.is_empty(), "unread input {:?}", self.input);
        self.stream
    }

    /// Send raw bytes.
    pub(crate) async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream.write_all(bytes.as_ref()).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// Send `line` plus CRLF and read the reply.
    pub(crate) async fn command(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n")).await;
        self.reply().await
    }

    /// Read one reply, failing the test if none comes within 10 s.
    pub(crate) async fn reply(&mut self) -> Reply {
        tokio::time::timeout(Duration::from_secs(10), self.reply_untimed())
            .await
            .expect("no reply within 10 s")
    }

    /// Read one (possibly multi-line) reply.
    pub(crate) async fn reply_untimed(&mut self) -> Reply {
        let mut lines = Vec::new();
        loop {
            let line = self.line().await;
            assert!(line.len() >= 4, "short reply line {line:?}");
            let (code, rest) = line.split_at(3);
            let (separator, text) = rest.split_at(1);
            lines.push(text.to_string());
            match separator {
                " " => {
                    return Reply {
                        code: code.to_string(),
                        lines,
                    };
                }
                "-" => continue,
                _ => panic!("bad reply line {line:?}"),
            }
        }
    }

    async fn line(&mut self) -> String {
        loop {
            if let Some(pos) = self.input.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.input.drain(..pos + 2).collect();
                return String::from_utf8(line[..pos].to_vec()).unwrap();
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "server closed the stream; unread: {:?}",
                String::from_utf8_lossy(&self.input)
            );
            self.input.extend_from_slice(&chunk[..n]);
        }
    }

    /// Fail unless the server closes the stream without sending anything more.
    pub(crate) async fn expect_closed(&mut self) {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), self.stream.read_to_end(&mut rest))
            .await
            .expect("stream not closed within 10 s")
            .unwrap();
        self.input.extend_from_slice(&rest);
        assert!(
            self.input.is_empty(),
            "unexpected bytes before close: {:?}",
            String::from_utf8_lossy(&self.input)
        );
    }

    /// EHLO, MAIL FROM and RCPT TO for each recipient, each answered 250.
    pub(crate) async fn envelope(&mut self, from: &str, to: &[&str]) {
        assert_code(&self.command("EHLO client.test").await, "250");
        assert_code(&self.command(&format!("MAIL FROM:<{from}>")).await, "250");
        for rcpt in to {
            assert_code(&self.command(&format!("RCPT TO:<{rcpt}>")).await, "250");
        }
    }

    /// DATA with `wire` (already dot-stuffed, ending in CRLF) and the final dot;
    /// returns the reply to the end of data.
    pub(crate) async fn data(&mut self, wire: &[u8]) -> Reply {
        assert_code(&self.command("DATA").await, "354");
        self.send(wire).await;
        self.send(b".\r\n").await;
        self.reply().await
    }
}

/// A session running on one end of an in-memory stream.
pub(crate) struct Harness {
    pub(crate) client: Client<DuplexStream>,
    pub(crate) store: Arc<MemoryDeliver>,
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) task: JoinHandle<Result<(), SessionError>>,
}

/// The configuration the tests start from.
pub(crate) fn config() -> SmtpConfig {
    SmtpConfig {
        hostname: HOST.to_string(),
        ..SmtpConfig::default()
    }
}

/// Start a session with `config`; the greeting is not read yet.
pub(crate) fn start(config: SmtpConfig) -> Harness {
    let (client_end, server_end) = tokio::io::duplex(256 * 1024);
    let store = Arc::new(MemoryDeliver::default());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let peer: SocketAddr = PEER.parse().unwrap();
    let task = tokio::spawn(serve(
        server_end,
        Some(peer),
        Arc::new(config),
        store.clone(),
        shutdown_rx,
    ));
    Harness {
        client: Client::new(client_end),
        store,
        shutdown,
        task,
    }
}

/// Start a session and read its greeting.
pub(crate) async fn start_greeted(config: SmtpConfig) -> Harness {
    let mut harness = start(config);
    let greeting = harness.client.reply().await;
    assert_code(&greeting, "220");
    harness
}

impl Harness {
    /// Wait for the session to end and return its result.
    pub(crate) async fn ended(self) -> Result<(), SessionError> {
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("session did not end within 10 s")
            .unwrap()
    }
}

/// A stream that counts successful writes, to check that pipelined replies are
/// batched.
pub(crate) struct CountingStream {
    pub(crate) inner: DuplexStream,
    pub(crate) writes: Arc<AtomicUsize>,
}

impl AsyncRead for CountingStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountingStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &result
            && *n > 0
        {
            self.writes.fetch_add(1, Ordering::SeqCst);
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Split a delivered message into its trace header fields (Return-Path and the four
/// lines of Received) and the bytes after them.
pub(crate) fn split_trace(message: &[u8]) -> (String, &[u8]) {
    let mut end = 0;
    for _ in 0..4 {
        let pos = message[end..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("trace fields end in CRLF");
        end += pos + 2;
    }
    (
        String::from_utf8(message[..end].to_vec()).unwrap(),
        &message[end..],
    )
}
