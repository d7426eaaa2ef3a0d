//! RCPT TO.

use std::borrow::Cow;

use smtp_proto::RcptTo;

use super::{Flow, Session};
use crate::deliver::{Deliver, RcptVerdict};
use crate::reply;

impl<D: Deliver> Session<D> {
    /// RCPT TO: ask the store about one recipient. `line` is the raw command line.
    pub(super) async fn rcpt(&mut self, to: RcptTo<Cow<'_, str>>, line: &[u8]) -> Flow {
        if self.transaction.is_none() {
            return self.bad(reply::NEED_MAIL);
        }
        // No DSN or other RCPT extension is advertised.
        if to.flags != 0 || to.orcpt.is_some() || to.rrvs != 0 {
            return self.bad(reply::UNSUPPORTED_PARAMETER);
        }
        let address = if to.address.is_empty() {
            // smtp-proto turns both `<>` and `<postmaster>` into "". The first is not a
            // recipient; the second must be accepted without a domain (RFC 5321 4.5.1).
            if names_postmaster(line) {
                "postmaster".to_string()
            } else {
                return self.bad(reply::BAD_ADDRESS);
            }
        } else {
            to.address.into_owned()
        };
        if !address.is_ascii() {
            return self.bad(reply::NON_ASCII_ADDRESS);
        }
        let (duplicate, full) = match &self.transaction {
            Some(transaction) => (
                transaction
                    .rcpt_to
                    .iter()
                    .any(|known| known.eq_ignore_ascii_case(&address)),
                transaction.rcpt_to.len() >= self.config.recipients_max,
            ),
            None => (false, false),
        };
        if duplicate {
            // Already accepted: say yes again, but store the message only once.
            return self.answer(reply::RECIPIENT_OK);
        }
        if full {
            return self.answer(reply::TOO_MANY_RECIPIENTS);
        }
        match self.deliver.check_recipient(&address).await {
            RcptVerdict::Accept => {
                if let Some(transaction) = &mut self.transaction {
                    transaction.rcpt_to.push(address);
                }
                self.answer(reply::RECIPIENT_OK)
            }
            RcptVerdict::UnknownUser => self.answer(reply::UNKNOWN_USER),
            RcptVerdict::RelayDenied => self.answer(reply::RELAY_DENIED),
            RcptVerdict::TempFail(reason) => {
                self.replies.push_text(451, [4, 3, 0], &reason);
                Flow::Continue
            }
            RcptVerdict::OverQuota(reason) => {
                self.replies.push_text(552, [5, 2, 2], &reason);
                Flow::Continue
            }
            RcptVerdict::Unroutable(reason) => {
                self.replies.push_text(550, [5, 4, 6], &reason);
                Flow::Continue
            }
        }
    }
}

/// Whether a RCPT line whose address smtp-proto read as "" named `<postmaster>`.
fn names_postmaster(line: &[u8]) -> bool {
    line.windows(b"postmaster".len())
        .any(|window| window.eq_ignore_ascii_case(b"postmaster"))
}
