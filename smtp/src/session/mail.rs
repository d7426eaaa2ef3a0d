//! MAIL FROM.

use std::borrow::Cow;

use smtp_proto::{MAIL_BODY_7BIT, MAIL_BODY_8BITMIME, MAIL_SMTPUTF8, MailFrom};

use super::transaction::Transaction;
use super::{Flow, Session};
use crate::deliver::Deliver;
use crate::reply;

impl<D: Deliver> Session<D> {
    /// MAIL FROM: start a transaction.
    ///
    /// `line` is the raw command line, to see a SIZE too large for smtp-proto's
    /// number parser (which wraps past `usize::MAX`).
    pub(super) fn mail(&mut self, from: MailFrom<Cow<'_, str>>, line: &[u8]) -> Flow {
        if self.hello.is_none() {
            return self.bad(reply::NEED_HELLO);
        }
        if self.transaction.is_some() {
            return self.bad(reply::NESTED_MAIL);
        }
        if from.flags & MAIL_SMTPUTF8 != 0 {
            return self.bad(reply::NO_SMTPUTF8);
        }
        if !parameters_supported(&from) {
            return self.bad(reply::UNSUPPORTED_PARAMETER);
        }
        if from.size > self.config.message_size_max || size_overflows(line) {
            return self.answer(reply::TOO_BIG);
        }
        if !from.address.is_ascii() {
            return self.bad(reply::NON_ASCII_ADDRESS);
        }
        let reverse_path = crate::address::requote(&from.address);
        self.transaction = Some(Transaction::new(reverse_path, &self.config));
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

/// True when the line's `SIZE=` parameter (after the path) is all digits but does
/// not fit in a `u64`: such a size is over any limit.
pub(super) fn size_overflows(line: &[u8]) -> bool {
    let after_path = match memchr::memrchr(b'>', line) {
        Some(pos) => &line[pos + 1..],
        None => return false,
    };
    after_path
        .split(|b| b.is_ascii_whitespace())
        .filter_map(|param| {
            let eq = param.iter().position(|&b| b == b'=')?;
            param[..eq]
                .eq_ignore_ascii_case(b"SIZE")
                .then_some(&param[eq + 1..])
        })
        .any(|digits| {
            !digits.is_empty()
                && digits.iter().all(u8::is_ascii_digit)
                && std::str::from_utf8(digits)
                    .ok()
                    .and_then(|d| d.parse::<u64>().ok())
                    .is_none_or(|v| usize::try_from(v).is_err())
        })
}

#[cfg(test)]
mod tests {
    use super::size_overflows;

    #[test]
    fn size_overflow_is_seen_on_the_raw_line() {
        assert!(size_overflows(
            b"MAIL FROM:<a@b.test> SIZE=999999999999999999999999\r\n"
        ));
        assert!(size_overflows(
            b"MAIL FROM:<a@b.test> size=18446744073709551616\r\n"
        ));
        assert!(!size_overflows(
            b"MAIL FROM:<a@b.test> SIZE=18446744073709551615\r\n"
        ));
        assert!(!size_overflows(b"MAIL FROM:<a@b.test> SIZE=100\r\n"));
        assert!(!size_overflows(
            b"MAIL FROM:<a@b.test> SIZE=000000000000000000000100\r\n"
        ));
        assert!(!size_overflows(b"MAIL FROM:<a@b.test>\r\n"));
        assert!(!size_overflows(b"MAIL FROM:<a@b.test> BODY=8BITMIME\r\n"));
    }
}
