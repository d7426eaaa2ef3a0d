//! Session state that outlives one command: the client's greeting and the mail
//! transaction (RFC 5321 4.1.4: reset by RSET, EHLO/HELO and the end of each message).

use crate::body::MessageBody;
use crate::config::SmtpConfig;

/// What the client said in EHLO/HELO.
#[derive(Debug, Clone)]
pub(super) struct Hello {
    /// The name it gave.
    pub(super) name: String,
    /// EHLO (ESMTP) rather than HELO.
    pub(super) extended: bool,
}

/// One mail transaction, from MAIL to the end of the message.
#[derive(Debug)]
pub(super) struct Transaction {
    /// Reverse-path, `""` for the null sender.
    pub(super) mail_from: String,
    /// Accepted recipients.
    pub(super) rcpt_to: Vec<String>,
    /// The message as received so far.
    pub(super) body: MessageBody,
    /// BDAT has been used, so DATA is no longer allowed (RFC 3030 3).
    pub(super) chunking: bool,
}

impl Transaction {
    /// A transaction from `mail_from` with the limits of `config`.
    pub(super) fn new(mail_from: String, config: &SmtpConfig) -> Transaction {
        Transaction {
            mail_from,
            rcpt_to: Vec::new(),
            body: MessageBody::new(config.message_size_max, config.text_line_max),
            chunking: false,
        }
    }
}
