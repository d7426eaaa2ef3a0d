//! MAIL FROM.

use std::borrow::Cow;

use smtp_proto::{MAIL_BODY_7BIT, MAIL_BODY_8BITMIME, MailFrom};

use super::transaction::Transaction;
use super::{Flow, Session};
use crate::deliver::Deliver;
use crate::reply;

impl<D: Deliver> Session<D> {
    /// MAIL FROM: start a transaction.
    pub(super) fn mail(&mut self, from: MailFrom<Cow<'_, str>>) -> Flow {
        if self.hello.is_none() {
            return self.bad(reply::NEED_HELLO);
        }
        if self.transaction.is_some() {
            return self.bad(reply::NESTED_MAIL);
        }
        if !parameters_supported(&from) {
            return self.bad(reply::UNSUPPORTED_PARAMETER);
        }
        if from.size > self.config.message_size_max {
            return self.answer(reply::TOO_BIG);
        }
        if !from.address.is_ascii() {
            return self.bad(reply::NON_ASCII_ADDRESS);
        }
        self.transaction = Some(Transaction::new(from.address.into_owned(), &self.config));
        self.answer(reply::SENDER_OK)
    }
}

/// Only SIZE and BODY=7BIT/8BITMIME are advertised; a client must not use the other
/// extensions smtp-proto knows (RFC 5321 4.1.4), and we could not honour them.
fn parameters_supported(from: &MailFrom<Cow<'_, str>>) -> bool {
    from.flags & !(MAIL_BODY_7BIT | MAIL_BODY_8BITMIME) == 0
        && from.trans_id.is_none()
        && from.by == 0
        && from.env_id.is_none()
        && from.solicit.is_none()
        && from.mtrk.is_none()
        && from.auth.is_none()
        && from.hold_for == 0
        && from.hold_until == 0
        && from.mt_priority == 0
}
