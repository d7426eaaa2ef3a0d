//! DATA and BDAT: receiving the message text and handing it to [`Deliver`].

use bytes::Bytes;
use chrono::Utc;

use super::transaction::Transaction;
use super::{BodyKind, Flow, Incoming, Phase, Session, Step};
use crate::body::{BodyFault, BodyReceiver, MessageBody};
use crate::deliver::{Deliver, DeliverError, Envelope};
use crate::reply::{self, Reply};
use crate::trace::{TraceInfo, new_queue_id, trace_fields};

impl<D: Deliver> Session<D> {
    /// DATA: switch to receiving text up to `<CRLF>.<CRLF>`.
    pub(super) fn data(&mut self) -> Flow {
        let Some(transaction) = &self.transaction else {
            return self.bad(reply::NEED_MAIL);
        };
        if transaction.chunking {
            return self.bad(reply::DATA_AFTER_BDAT);
        }
        if transaction.rcpt_to.is_empty() {
            return self.bad(reply::NEED_RCPT);
        }
        self.phase = Phase::Body(Incoming {
            receiver: BodyReceiver::data(),
            kind: BodyKind::Data,
        });
        self.replies.push_plain(354, reply::START_DATA);
        Flow::Continue
    }

    /// BDAT: receive a chunk of `chunk_size_bytes`. The chunk follows the command
    /// whatever we think of it, so even a refused chunk is read (and dropped) before
    /// it is answered, or its bytes would be taken for commands.
    pub(super) fn bdat(&mut self, chunk_size_bytes: usize, last: bool) -> Flow {
        let kind = match &mut self.transaction {
            None => BodyKind::Rejected(reply::NEED_MAIL),
            Some(transaction) if transaction.rcpt_to.is_empty() => {
                BodyKind::Rejected(reply::NEED_RCPT)
            }
            Some(transaction) => {
                transaction.chunking = true;
                transaction.body.announce_chunk(chunk_size_bytes);
                BodyKind::Chunk {
                    size_bytes: chunk_size_bytes,
                    last,
                }
            }
        };
        self.phase = Phase::Body(Incoming {
            receiver: BodyReceiver::bdat(chunk_size_bytes),
            kind,
        });
        Flow::Continue
    }

    /// Take body bytes from the start of `input`.
    pub(super) async fn body_step(&mut self, input: &[u8]) -> Step {
        let Phase::Body(incoming) = &mut self.phase else {
            return Step::NeedMore;
        };
        let mut body: Option<&mut MessageBody> = match incoming.kind {
            BodyKind::Rejected(_) => None,
            BodyKind::Data | BodyKind::Chunk { .. } => self
                .transaction
                .as_mut()
                .map(|transaction| &mut transaction.body),
        };
        let room_bytes = body.as_ref().map_or(usize::MAX, |body| body.room_bytes());
        let feed = &input[..input.len().min(room_bytes)];
        let mut bytes = feed.iter();
        let complete = match body.as_deref_mut().and_then(MessageBody::sink) {
            Some(sink) => incoming.receiver.ingest(&mut bytes, sink),
            None => {
                self.scratch.clear();
                incoming.receiver.ingest(&mut bytes, &mut self.scratch)
            }
        };
        let consumed_bytes = feed.len() - bytes.len();
        if let Some(body) = body {
            body.check(complete);
        }
        if !complete {
            return match consumed_bytes {
                0 => Step::NeedMore,
                _ => Step::Consumed(consumed_bytes),
            };
        }
        let flow = match std::mem::replace(&mut self.phase, Phase::Command) {
            Phase::Body(incoming) => self.end_of_body(incoming.kind).await,
            Phase::Command | Phase::SkipLine => Flow::Continue,
        };
        match flow {
            Flow::Continue => Step::Consumed(consumed_bytes),
            Flow::Close => Step::Close,
        }
    }

    /// The DATA text or a BDAT chunk has been read completely.
    async fn end_of_body(&mut self, kind: BodyKind) -> Flow {
        match kind {
            BodyKind::Rejected(reply) => self.bad(reply),
            BodyKind::Data | BodyKind::Chunk { last: true, .. } => match self.transaction.take() {
                Some(transaction) => self.end_of_message(transaction).await,
                None => Flow::Continue,
            },
            BodyKind::Chunk {
                size_bytes,
                last: false,
            } => {
                let fault = self.transaction.as_ref().and_then(|t| t.body.fault());
                if let Some(fault) = fault {
                    // The transaction failed; the client must not send more chunks
                    // (RFC 3030 2), and any it sends find no transaction.
                    self.transaction = None;
                    return self.answer(fault_reply(fault));
                }
                let text = format!("{size_bytes} octets received");
                self.replies.push_text(250, [2, 0, 0], &text);
                Flow::Continue
            }
        }
    }

    /// The whole message is in: refuse it if it broke a limit, else deliver it. Either
    /// way the transaction is over.
    async fn end_of_message(&mut self, mut transaction: Transaction) -> Flow {
        transaction.body.finish();
        if let Some(fault) = transaction.body.fault() {
            return self.answer(fault_reply(fault));
        }
        let (helo, extended) = match &self.hello {
            Some(hello) => (hello.name.clone(), hello.extended),
            None => (String::new(), false),
        };
        let envelope = Envelope {
            helo,
            mail_from: transaction.mail_from,
            rcpt_to: transaction.rcpt_to,
            peer: self.peer,
        };
        let received_at = Utc::now();
        let queue_id = new_queue_id(received_at);
        let info = TraceInfo {
            hostname: &self.config.hostname,
            extended,
            tls: self.tls.as_deref(),
            queue_id: &queue_id,
            received_at,
        };
        let mut message = trace_fields(&envelope, &info);
        let text = transaction.body.into_bytes();
        message.reserve_exact(text.len());
        message.extend_from_slice(&text);
        drop(text);
        let size_bytes = message.len();
        match self.deliver.deliver(&envelope, Bytes::from(message)).await {
            Ok(()) => {
                tracing::debug!(
                    queue_id,
                    size_bytes,
                    recipients = envelope.rcpt_to.len(),
                    "message delivered"
                );
                let text = format!("Ok: queued as {queue_id}");
                self.replies.push_text(250, [2, 0, 0], &text);
            }
            Err(DeliverError::Temporary(reason)) => {
                tracing::debug!(queue_id, %reason, "delivery failed temporarily");
                self.replies.push_text(451, [4, 3, 0], &reason);
            }
            Err(DeliverError::NoSpace(reason)) => {
                tracing::debug!(queue_id, %reason, "no storage for the message");
                self.replies.push_text(452, [4, 3, 1], &reason);
            }
            Err(DeliverError::OverQuota(reason)) => {
                tracing::debug!(queue_id, %reason, "a recipient is over quota");
                self.replies.push_text(552, [5, 2, 2], &reason);
            }
            Err(DeliverError::Permanent(reason)) => {
                tracing::debug!(queue_id, %reason, "delivery failed permanently");
                self.replies.push_text(554, [5, 3, 0], &reason);
            }
        }
        Flow::Continue
    }
}

/// The answer to a message refused while it arrived.
fn fault_reply(fault: BodyFault) -> Reply {
    match fault {
        BodyFault::TooLarge => reply::TOO_BIG,
        BodyFault::LineTooLong => reply::TEXT_LINE_TOO_LONG,
        BodyFault::BareNewline => reply::BARE_NEWLINE,
    }
}
