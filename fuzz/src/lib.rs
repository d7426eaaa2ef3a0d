//! Shared pieces of the fuzz targets: a paused-clock runtime (timeouts and delays
//! pass at once), in-memory doubles of what the SMTP and POP3 sessions call, and a
//! driver that feeds a session bytes over a duplex pipe and collects its answers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// A current-thread runtime whose clock is paused: a session's idle timer or login
/// delay fires as soon as nothing else can run, so one input costs CPU, not time.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime")
}

/// Write `chunks` into `client` one write each, close it, and read everything the
/// server side answers until it closes. Returns the answer bytes.
pub async fn exchange(mut client: DuplexStream, chunks: Vec<Vec<u8>>) -> Vec<u8> {
    let (mut rd, mut wr) = tokio::io::split(&mut client);
    let write = async move {
        for c in chunks {
            if wr.write_all(&c).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    };
    let read = async move {
        let mut out = Vec::new();
        let _ = rd.read_to_end(&mut out).await;
        out
    };
    let ((), out) = tokio::join!(write, read);
    out
}

/// Split fuzz input into client writes at each 0xFF byte (never valid in either
/// protocol's commands, so the fuzzer can choose where TCP segments end).
pub fn chunks(data: &[u8]) -> Vec<Vec<u8>> {
    data.split(|b| *b == 0xFF).map(<[u8]>::to_vec).collect()
}

/// SMTP side: accepts `postmaster` and `*@example.test` except `tempfail@` (4xx)
/// and `nobody@` (unknown); stores into memory, fails deliveries to `full@`.
#[derive(Debug, Default)]
pub struct FakeDeliver {
    /// Messages stored so far.
    pub stored: Mutex<Vec<(smtp::Envelope, Bytes)>>,
}

impl smtp::Deliver for FakeDeliver {
    async fn check_recipient(&self, address: &str) -> smtp::RcptVerdict {
        if address.eq_ignore_ascii_case("postmaster") {
            return smtp::RcptVerdict::Accept;
        }
        match address.rsplit_once('@') {
            Some((local, domain)) if domain.eq_ignore_ascii_case("example.test") => {
                match local.to_ascii_lowercase().as_str() {
                    "tempfail" => smtp::RcptVerdict::TempFail("registry down".into()),
                    "nobody" => smtp::RcptVerdict::UnknownUser,
                    _ => smtp::RcptVerdict::Accept,
                }
            }
            Some(_) => smtp::RcptVerdict::RelayDenied,
            None => smtp::RcptVerdict::UnknownUser,
        }
    }

    async fn deliver(
        &self,
        envelope: &smtp::Envelope,
        message: Bytes,
    ) -> Result<(), smtp::DeliverError> {
        if envelope
            .rcpt_to
            .iter()
            .any(|r| r.to_ascii_lowercase().starts_with("full@"))
        {
            return Err(smtp::DeliverError::NoSpace("disk full".into()));
        }
        if let Ok(mut s) = self.stored.lock() {
            s.push((envelope.clone(), message));
        }
        Ok(())
    }
}

/// An SMTP configuration with small limits (so the fuzzer reaches them) and the
/// production timeouts (free on the paused clock).
pub fn smtp_config() -> Arc<smtp::SmtpConfig> {
    Arc::new(smtp::SmtpConfig {
        hostname: "mx.fuzz.test".into(),
        message_size_max: 4096,
        recipients_max: 4,
        command_line_max: 512,
        text_line_max: 1000,
        errors_max: 8,
        commands_max: 64,
        ..smtp::SmtpConfig::default()
    })
}

/// POP3 side: `alice`/`secret` logs in, `temp` gets a temporary failure, anyone
/// else is refused.
#[derive(Debug, Default)]
pub struct FakeAuth;

impl pop::Authenticate for FakeAuth {
    async fn authenticate(&self, user: &str, password: &str) -> Result<String, pop::AuthError> {
        match (user, password) {
            ("alice", "secret") => Ok("alice".into()),
            ("temp", _) => Err(pop::AuthError::TempFail("registry down".into())),
            _ => Err(pop::AuthError::Invalid),
        }
    }
}

/// POP3 maildrops: three messages for anyone (one with bare LF, one with a dot
/// line), deletes counted.
#[derive(Debug, Default)]
pub struct FakeMailbox {
    /// Deletes committed so far (message indexes).
    pub deleted: Arc<Mutex<Vec<usize>>>,
}

/// The messages every fake maildrop holds.
pub fn messages() -> Vec<Bytes> {
    vec![
        Bytes::from_static(b"Subject: one\r\n\r\nhello\r\n"),
        Bytes::from_static(b"Subject: two\r\n\r\n.dot line\r\n..\r\n.\r\nend\r\n"),
        Bytes::from_static(b"Subject: bare\n\nbare LF\nand CR\rmixed\r\n"),
    ]
}

/// One open fake maildrop.
#[derive(Debug)]
pub struct FakeSession {
    entries: Vec<pop::MessageEntry>,
    bodies: Vec<Bytes>,
    deleted: Arc<Mutex<Vec<usize>>>,
}

impl pop::Mailbox for FakeMailbox {
    type Session = FakeSession;

    async fn open(&self, _user: &str) -> Result<FakeSession, pop::MailboxError> {
        let bodies = messages();
        let entries = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| pop::MessageEntry {
                uid: format!("uid{i}"),
                size: b.len() as u64,
            })
            .collect();
        Ok(FakeSession {
            entries,
            bodies,
            deleted: self.deleted.clone(),
        })
    }
}

impl pop::MailboxSession for FakeSession {
    fn messages(&self) -> &[pop::MessageEntry] {
        &self.entries
    }

    async fn fetch(&mut self, index: usize) -> Result<Bytes, pop::MailboxError> {
        self.bodies
            .get(index)
            .cloned()
            .ok_or(pop::MailboxError::NoSuchMessage)
    }

    async fn commit(self, deleted: Vec<usize>) -> Result<(), pop::MailboxError> {
        if let Ok(mut d) = self.deleted.lock() {
            d.extend(deleted);
        }
        Ok(())
    }
}

/// A POP3 configuration with small limits and no login delay worth waiting for.
pub fn pop_config() -> Arc<pop::PopConfig> {
    Arc::new(pop::PopConfig {
        hostname: "pop.fuzz.test".into(),
        command_line_max: 255,
        errors_max: 8,
        commands_max: 64,
        auth_failure_delay: Duration::from_millis(1),
        ..pop::PopConfig::default()
    })
}
