//! RSET and QUIT; the one-line answers (NOOP, VRFY, EXPN, HELP) are in the dispatcher.

use super::{Flow, Session};
use crate::deliver::Deliver;
use crate::reply;

impl<D: Deliver> Session<D> {
    /// RSET: forget the transaction, keep the greeting.
    pub(super) fn rset(&mut self) -> Flow {
        self.transaction = None;
        self.answer(reply::OK)
    }

    /// STARTTLS (RFC 3207): accepted only once, outside a transaction, without
    /// parameters, and only where a certificate is configured.
    pub(super) fn starttls(&mut self, line: &[u8]) -> Flow {
        if self.tls.is_some() {
            return self.bad(reply::TLS_ACTIVE);
        }
        if self.config.starttls.is_none() {
            return self.bad(reply::TLS_UNAVAILABLE);
        }
        if !line.trim_ascii().eq_ignore_ascii_case(b"STARTTLS") {
            return self.bad(reply::TLS_SYNTAX);
        }
        if self.transaction.is_some() {
            return self.bad(reply::TLS_IN_TRANSACTION);
        }
        self.replies.push(reply::READY_FOR_TLS);
        self.tls_requested = true;
        Flow::Continue
    }

    /// QUIT: say goodbye and close.
    pub(super) fn quit(&mut self) -> Flow {
        let text = format!("{} closing connection", self.config.hostname);
        self.replies.push_text(221, [2, 0, 0], &text);
        Flow::Close
    }
}
