//! Reply formatting. Replies are appended to one output buffer so that a whole pipeline
//! batch leaves in one write. Every reply except the greeting, the HELO/EHLO answers and
//! `354` carries an enhanced status code (RFC 2034 exempts exactly those).

use std::fmt::{self, Display};

use smtp_proto::{EhloResponse, Response};

/// A reply whose text is fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reply {
    /// Basic status code, e.g. 250.
    pub(crate) code: u16,
    /// Enhanced status code (class, subject, detail), e.g. `[2, 0, 0]`.
    pub(crate) esc: [u8; 3],
    /// Human-readable text.
    pub(crate) text: &'static str,
}

impl Reply {
    const fn new(code: u16, esc: [u8; 3], text: &'static str) -> Reply {
        Reply { code, esc, text }
    }
}

/// `250 2.0.0 Ok`.
pub(crate) const OK: Reply = Reply::new(250, [2, 0, 0], "Ok");
/// Answer to a good MAIL.
pub(crate) const SENDER_OK: Reply = Reply::new(250, [2, 1, 0], "Sender ok");
/// Answer to an accepted RCPT.
pub(crate) const RECIPIENT_OK: Reply = Reply::new(250, [2, 1, 5], "Recipient ok");
/// Answer to DATA: the client may now send the text.
pub(crate) const START_DATA: &str = "Start mail input; end with <CRLF>.<CRLF>";
/// Unknown command.
pub(crate) const UNRECOGNIZED: Reply = Reply::new(500, [5, 5, 2], "Command unrecognized");
/// Command line over `command_line_max`.
pub(crate) const LINE_TOO_LONG: Reply = Reply::new(500, [5, 5, 2], "Line too long");
/// Arguments smtp-proto could not parse.
pub(crate) const SYNTAX: Reply = Reply::new(501, [5, 5, 4], "Syntax error in parameters");
/// An address smtp-proto rejected, or one that is empty where a mailbox is needed.
pub(crate) const BAD_ADDRESS: Reply = Reply::new(501, [5, 5, 4], "Bad address syntax");
/// Non-ASCII addresses need SMTPUTF8, which we do not offer.
pub(crate) const NON_ASCII_ADDRESS: Reply = Reply::new(
    501,
    [5, 5, 4],
    "Non-ASCII address needs SMTPUTF8, not offered",
);
/// A MAIL/RCPT parameter we do not recognise or of an extension we do not advertise
/// (RFC 5321 4.1.1.11 asks for 555).
pub(crate) const UNSUPPORTED_PARAMETER: Reply =
    Reply::new(555, [5, 5, 4], "Parameter not supported");
/// MAIL with SMTPUTF8, which we do not advertise (RFC 6531 3.4 / RFC 5321 4.1.1.11).
pub(crate) const NO_SMTPUTF8: Reply = Reply::new(555, [5, 5, 4], "SMTPUTF8 not supported");
/// MAIL before EHLO/HELO.
pub(crate) const NEED_HELLO: Reply = Reply::new(503, [5, 5, 1], "Send EHLO or HELO first");
/// MAIL inside a transaction.
pub(crate) const NESTED_MAIL: Reply = Reply::new(503, [5, 5, 1], "Sender already given");
/// RCPT, DATA or BDAT without a transaction.
pub(crate) const NEED_MAIL: Reply = Reply::new(503, [5, 5, 1], "Send MAIL first");
/// DATA or BDAT with no accepted recipient.
pub(crate) const NEED_RCPT: Reply = Reply::new(503, [5, 5, 1], "No valid recipients");
/// DATA after BDAT chunks in the same transaction.
pub(crate) const DATA_AFTER_BDAT: Reply = Reply::new(503, [5, 5, 1], "DATA not allowed after BDAT");
/// SIZE parameter or body over `message_size_max`.
pub(crate) const TOO_BIG: Reply = Reply::new(
    552,
    [5, 3, 4],
    "Message size exceeds fixed maximum message size",
);
/// A body with a bare CR or LF (one not part of a CRLF): refused as Postfix's
/// `smtpd_forbid_bare_newline = reject` does, against SMTP smuggling.
pub(crate) const BARE_NEWLINE: Reply = Reply::new(554, [5, 5, 2], "bare <CR> or <LF> not allowed");
/// A command line ending in a bare LF or holding a bare CR.
pub(crate) const BARE_NEWLINE_COMMAND: Reply =
    Reply::new(500, [5, 5, 2], "bare <CR> or <LF> in command not allowed");
/// A text line over `text_line_max`.
pub(crate) const TEXT_LINE_TOO_LONG: Reply = Reply::new(552, [5, 3, 4], "Line too long");
/// Over `recipients_max`.
pub(crate) const TOO_MANY_RECIPIENTS: Reply = Reply::new(452, [4, 5, 3], "Too many recipients");
/// [`RcptVerdict::UnknownUser`](crate::RcptVerdict::UnknownUser).
pub(crate) const UNKNOWN_USER: Reply = Reply::new(550, [5, 1, 1], "User unknown");
/// [`RcptVerdict::RelayDenied`](crate::RcptVerdict::RelayDenied).
pub(crate) const RELAY_DENIED: Reply = Reply::new(550, [5, 7, 1], "relaying denied");
/// VRFY: we neither confirm nor deny mailboxes.
pub(crate) const CANNOT_VRFY: Reply = Reply::new(
    252,
    [2, 5, 0],
    "Cannot VRFY user, but will accept message and attempt delivery",
);
/// EXPN: lists are not disclosed.
pub(crate) const NO_EXPN: Reply = Reply::new(502, [5, 5, 1], "EXPN not available");
/// STARTTLS accepted (RFC 3207 4).
pub(crate) const READY_FOR_TLS: Reply = Reply::new(220, [2, 0, 0], "Ready to start TLS");
/// STARTTLS on a connection already in TLS (RFC 3207 4.2).
pub(crate) const TLS_ACTIVE: Reply = Reply::new(503, [5, 5, 1], "TLS already active");
/// STARTTLS in the middle of a mail transaction.
pub(crate) const TLS_IN_TRANSACTION: Reply = Reply::new(
    503,
    [5, 5, 1],
    "STARTTLS not allowed during a mail transaction",
);
/// STARTTLS with parameters (RFC 3207 4: it takes none).
pub(crate) const TLS_SYNTAX: Reply = Reply::new(501, [5, 5, 4], "Syntax: STARTTLS");
/// STARTTLS where no certificate is configured.
pub(crate) const TLS_UNAVAILABLE: Reply = Reply::new(502, [5, 5, 1], "STARTTLS not available");
/// Known verbs we do not offer (AUTH, ETRN, ATRN, BURL).
pub(crate) const NOT_IMPLEMENTED: Reply = Reply::new(502, [5, 5, 1], "Command not implemented");
/// HELP.
pub(crate) const HELP: Reply = Reply::new(
    214,
    [2, 0, 0],
    "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP",
);

/// The replies of one batch, waiting to be written.
#[derive(Debug, Default)]
pub(crate) struct Replies {
    bytes: Vec<u8>,
}

impl Replies {
    /// Append a fixed reply.
    pub(crate) fn push(&mut self, reply: Reply) {
        self.push_text(reply.code, reply.esc, reply.text);
    }

    /// Append a reply with an enhanced status code and `text`, which may come from
    /// elsewhere (a delivery error): control characters in it become spaces.
    pub(crate) fn push_text(&mut self, code: u16, esc: [u8; 3], text: &str) {
        let [class, subject, detail] = esc;
        let response = Response::new(code, class, subject, detail, Printable(text));
        infallible(response.write(&mut self.bytes));
    }

    /// Append a reply without enhanced status code (greeting, HELO, 354).
    pub(crate) fn push_plain(&mut self, code: u16, text: &str) {
        use std::io::Write;
        infallible(write!(self.bytes, "{code} {}\r\n", Printable(text)));
    }

    /// Append a multi-line EHLO reply, built by smtp-proto.
    pub(crate) fn push_ehlo(&mut self, ehlo: &EhloResponse<&str>) {
        infallible(ehlo.write(&mut self.bytes));
    }

    /// The bytes waiting to be written.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Bytes waiting to be written.
    pub(crate) fn len_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Forget what was written.
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
    }
}

/// Writing into a `Vec<u8>` cannot fail; only our own `Display` impls could, and they
/// do not.
fn infallible(result: std::io::Result<()>) {
    debug_assert!(result.is_ok(), "writing a reply into memory failed");
}

/// Text shown with every control character replaced by a space, so that nothing put
/// into a reply or a header field can end the line early or inject another one.
pub(crate) struct Printable<'a>(pub(crate) &'a str);

impl Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for ch in self.0.chars() {
            if ch.is_control() {
                f.write_str(" ")?;
            } else {
                fmt::Write::write_char(f, ch)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_has_enhanced_code_and_crlf() {
        let mut replies = Replies::default();
        replies.push(OK);
        replies.push_text(451, [4, 3, 0], "disk\r\nfull");
        assert_eq!(
            replies.as_bytes(),
            b"250 2.0.0 Ok\r\n451 4.3.0 disk  full\r\n"
        );
    }

    #[test]
    fn plain_reply_has_no_enhanced_code() {
        let mut replies = Replies::default();
        replies.push_plain(220, "mx.test ESMTP Porcupine");
        assert_eq!(replies.as_bytes(), b"220 mx.test ESMTP Porcupine\r\n");
        replies.clear();
        assert_eq!(replies.len_bytes(), 0);
    }
}
