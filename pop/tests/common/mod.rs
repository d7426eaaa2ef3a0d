//! Test support: an in-memory account store and maildrop, a tiny POP3 client, and
//! a harness that runs `pop::serve` over `tokio::io::duplex`.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use pop::{
    AuthError, Authenticate, Mailbox, MailboxError, MailboxSession, MessageEntry, PopConfig,
    SessionError,
};
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, DuplexStream, ReadBuf,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Default)]
struct Inner {
    passwords: HashMap<String, String>,
    mailboxes: HashMap<String, Vec<(String, Bytes)>>,
    locked: HashSet<String>,
    fail_commit: bool,
    auth_tempfail: bool,
    auth_rate_limited: bool,
    open_tempfail: bool,
    commits: usize,
}

/// In-memory accounts and maildrops; `open` locks a maildrop so a second open is
/// `InUse` until the first session is committed or dropped.
#[derive(Clone, Default)]
pub struct MemStore {
    inner: Arc<Mutex<Inner>>,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a user (lower-case canonical name) with a password and an empty maildrop.
    pub fn add_user(&self, user: &str, password: &str) {
        let mut inner = self.inner.lock().unwrap();
        inner
            .passwords
            .insert(user.to_string(), password.to_string());
        inner.mailboxes.entry(user.to_string()).or_default();
    }

    pub fn add_message(&self, user: &str, uid: &str, body: &[u8]) {
        let mut inner = self.inner.lock().unwrap();
        inner
            .mailboxes
            .entry(user.to_string())
            .or_default()
            .push((uid.to_string(), Bytes::copy_from_slice(body)));
    }

    /// Uids now stored for `user`.
    pub fn uids(&self, user: &str) -> Vec<String> {
        let inner = self.inner.lock().unwrap();
        inner.mailboxes[user]
            .iter()
            .map(|(uid, _)| uid.clone())
            .collect()
    }

    pub fn is_locked(&self, user: &str) -> bool {
        self.inner.lock().unwrap().locked.contains(user)
    }

    pub fn commits(&self) -> usize {
        self.inner.lock().unwrap().commits
    }

    pub fn set_fail_commit(&self, fail: bool) {
        self.inner.lock().unwrap().fail_commit = fail;
    }

    pub fn set_auth_tempfail(&self, fail: bool) {
        self.inner.lock().unwrap().auth_tempfail = fail;
    }

    pub fn set_auth_rate_limited(&self, limited: bool) {
        self.inner.lock().unwrap().auth_rate_limited = limited;
    }

    pub fn set_open_tempfail(&self, fail: bool) {
        self.inner.lock().unwrap().open_tempfail = fail;
    }
}

impl Authenticate for MemStore {
    async fn authenticate(&self, user: &str, password: &str) -> Result<String, AuthError> {
        let inner = self.inner.lock().unwrap();
        if inner.auth_tempfail {
            return Err(AuthError::TempFail("registry down".into()));
        }
        if inner.auth_rate_limited {
            return Err(AuthError::RateLimited);
        }
        // Login names are case-insensitive; the canonical name is lower case.
        let canonical = user.to_lowercase();
        match inner.passwords.get(&canonical) {
            Some(stored) if stored == password => Ok(canonical),
            _ => Err(AuthError::Invalid),
        }
    }
}

impl Mailbox for MemStore {
    type Session = MemSession;

    async fn open(&self, user: &str) -> Result<MemSession, MailboxError> {
        let mut inner = self.inner.lock().unwrap();
        if inner.open_tempfail {
            return Err(MailboxError::TempFail("fragment node down".into()));
        }
        if !inner.locked.insert(user.to_string()) {
            return Err(MailboxError::InUse);
        }
        let snapshot = inner.mailboxes.get(user).cloned().unwrap_or_default();
        let entries = snapshot
            .iter()
            .map(|(uid, body)| MessageEntry {
                uid: uid.clone(),
                size: body.len() as u64,
            })
            .collect();
        Ok(MemSession {
            inner: self.inner.clone(),
            user: user.to_string(),
            entries,
            snapshot,
        })
    }
}

pub struct MemSession {
    inner: Arc<Mutex<Inner>>,
    user: String,
    entries: Vec<MessageEntry>,
    snapshot: Vec<(String, Bytes)>,
}

impl MailboxSession for MemSession {
    fn messages(&self) -> &[MessageEntry] {
        &self.entries
    }

    async fn fetch(&mut self, index: usize) -> Result<Bytes, MailboxError> {
        self.snapshot
            .get(index)
            .map(|(_, body)| body.clone())
            .ok_or(MailboxError::NoSuchMessage)
    }

    async fn commit(self, deleted: Vec<usize>) -> Result<(), MailboxError> {
        let mut inner = self.inner.lock().unwrap();
        if inner.fail_commit {
            return Err(MailboxError::TempFail("disk full".into()));
        }
        inner.commits += 1;
        let doomed: HashSet<&str> = deleted
            .iter()
            .map(|&index| self.snapshot[index].0.as_str())
            .collect();
        if let Some(messages) = inner.mailboxes.get_mut(&self.user) {
            messages.retain(|(uid, _)| !doomed.contains(uid.as_str()));
        }
        Ok(())
        // The lock is released by Drop, which runs as `self` goes out of scope.
    }
}

impl Drop for MemSession {
    fn drop(&mut self) {
        self.inner.lock().unwrap().locked.remove(&self.user);
    }
}

/// Counts flushes on the server side of the connection, to see pipelined replies
/// leave in one write.
pub struct CountingIo<S> {
    inner: S,
    flushes: Arc<AtomicUsize>,
}

impl<S: AsyncRead + Unpin> AsyncRead for CountingIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CountingIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        if result.is_ready() {
            self.flushes.fetch_add(1, Ordering::SeqCst);
        }
        result
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A minimal POP3 client that undoes byte-stuffing itself.
pub struct Client<S> {
    stream: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub fn new(stream: S) -> Self {
        Client {
            stream: BufReader::new(stream),
        }
    }

    /// The stream, to switch it to TLS; fails if replies are left unread.
    #[allow(dead_code)]
    pub fn into_inner(self) -> S {
        assert!(self.stream.buffer().is_empty(), "unread input");
        self.stream.into_inner()
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).await.unwrap();
    }

    /// One raw line including its CRLF; empty at end of stream.
    pub async fn raw_line(&mut self) -> Vec<u8> {
        let mut line = Vec::new();
        self.stream.read_until(b'\n', &mut line).await.unwrap();
        line
    }

    /// One status line, CRLF checked and removed.
    pub async fn line(&mut self) -> String {
        let raw = self.raw_line().await;
        assert!(raw.ends_with(b"\r\n"), "line without CRLF: {raw:?}");
        String::from_utf8(raw[..raw.len() - 2].to_vec()).unwrap()
    }

    /// Send a command line and return the status line.
    pub async fn cmd(&mut self, command: &str) -> String {
        self.send(format!("{command}\r\n").as_bytes()).await;
        self.line().await
    }

    /// The body of a multi-line response, stuffing removed, terminator excluded.
    pub async fn body(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line = self.raw_line().await;
            assert!(
                !line.is_empty(),
                "stream ended inside a multi-line response"
            );
            if line == b".\r\n" {
                return body;
            }
            let unstuffed = if line.starts_with(b".") {
                &line[1..]
            } else {
                &line[..]
            };
            body.extend_from_slice(unstuffed);
        }
    }

    /// The raw bytes of a multi-line response up to and including the terminator.
    pub async fn raw_body(&mut self) -> Vec<u8> {
        let mut wire = Vec::new();
        loop {
            let line = self.raw_line().await;
            assert!(
                !line.is_empty(),
                "stream ended inside a multi-line response"
            );
            wire.extend_from_slice(&line);
            if line == b".\r\n" {
                return wire;
            }
        }
    }

    /// Text lines of a multi-line response.
    pub async fn lines(&mut self) -> Vec<String> {
        let body = self.body().await;
        String::from_utf8(body)
            .unwrap()
            .split_terminator("\r\n")
            .map(str::to_string)
            .collect()
    }

    /// Whether the server has closed the connection (reads end of stream).
    pub async fn at_eof(&mut self) -> bool {
        self.raw_line().await.is_empty()
    }

    pub async fn login(&mut self, user: &str, password: &str) -> String {
        assert!(self.cmd(&format!("USER {user}")).await.starts_with("+OK"));
        self.cmd(&format!("PASS {password}")).await
    }
}

/// A running session over an in-memory pipe.
pub struct Harness {
    pub client: Client<DuplexStream>,
    pub task: JoinHandle<Result<(), SessionError>>,
    pub shutdown: watch::Sender<bool>,
    pub flushes: Arc<AtomicUsize>,
}

pub fn test_config() -> PopConfig {
    PopConfig {
        hostname: "pop.test".to_string(),
        idle_timeout: Duration::from_secs(600),
        auth_failure_delay: Duration::from_secs(1),
        ..PopConfig::default()
    }
}

/// alice (password "wonderland") with three messages, bob (password "builder") empty.
pub fn sample_store() -> MemStore {
    let store = MemStore::new();
    store.add_user("alice", "wonderland");
    store.add_user("bob", "builder");
    store.add_message("alice", "uid-one", MSG_ONE);
    store.add_message("alice", "uid-two", MSG_TWO);
    store.add_message("alice", "uid-three", MSG_THREE);
    store
}

pub const MSG_ONE: &[u8] = b"From: a@x\r\nSubject: one\r\n\r\nHello\r\n";
/// Lines starting with dots, in headers' body and at the end.
pub const MSG_TWO: &[u8] =
    b"From: b@x\r\nSubject: dots\r\n\r\n.leading dot\r\nmiddle . dot\r\n..two dots\r\n.\r\nlast\r\n";
/// 8-bit bytes and no final CRLF.
pub const MSG_THREE: &[u8] = b"Subject: caf\xc3\xa9\r\n\r\nbytes \x00\x01\xff\xfe\x80\r\nno end";

pub fn start(config: PopConfig, store: &MemStore) -> Harness {
    start_with_shutdown(config, store, false)
}

pub fn start_with_shutdown(config: PopConfig, store: &MemStore, shutting_down: bool) -> Harness {
    let (client_side, server_side) = tokio::io::duplex(64 * 1024);
    let (shutdown, shutdown_rx) = watch::channel(shutting_down);
    let flushes = Arc::new(AtomicUsize::new(0));
    let io = CountingIo {
        inner: server_side,
        flushes: flushes.clone(),
    };
    let store = Arc::new(store.clone());
    let task = tokio::spawn(pop::serve(
        io,
        Arc::new(config),
        store.clone(),
        store,
        shutdown_rx,
    ));
    Harness {
        client: Client::new(client_side),
        task,
        shutdown,
        flushes,
    }
}

/// Start a session, read the greeting and log in as alice.
pub async fn start_logged_in(store: &MemStore) -> Harness {
    let mut h = start(test_config(), store);
    assert!(h.client.line().await.starts_with("+OK"));
    let reply = h.client.login("alice", "wonderland").await;
    assert!(reply.starts_with("+OK"), "{reply}");
    h
}

/// Wait for the session task to end and return its result.
pub async fn finish(task: JoinHandle<Result<(), SessionError>>) -> Result<(), SessionError> {
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("session did not end")
        .expect("session task panicked")
}
