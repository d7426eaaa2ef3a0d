//! Message body reception: smtp-proto's receivers do the framing (`<CRLF>.<CRLF>` and
//! dot-unstuffing for DATA, exact byte counts for BDAT); [`MessageBody`] keeps the
//! bytes and enforces the size and line-length limits while they arrive, so that a
//! message over the limit is never buffered past it.

use std::slice::Iter;

use smtp_proto::request::receiver::{BdatReceiver, DataReceiver};

/// Why a message was refused while its body was still arriving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFault {
    /// The body grew past `message_size_max`.
    TooLarge,
    /// A line grew past `text_line_max`.
    LineTooLong,
    /// A CR not followed by LF, or an LF not preceded by CR (DATA and BDAT alike).
    BareNewline,
}

/// One of smtp-proto's body receivers.
pub(crate) enum BodyReceiver {
    /// Text after DATA, up to `<CRLF>.<CRLF>`.
    Data(DataReceiver),
    /// One BDAT chunk of a known size.
    Bdat(BdatReceiver),
}

impl BodyReceiver {
    /// A receiver for the text after DATA.
    pub(crate) fn data() -> BodyReceiver {
        let mut receiver = DataReceiver::new();
        // smtp-proto's DataReceiver starts as if in the middle of a line, so a first line
        // "." would not end the message and a first line "..x" would not be unstuffed.
        // The CRLF that ended the DATA command begins the first line (RFC 5321 4.1.1.4),
        // so replay it into a throwaway buffer.
        let mut primer = Vec::with_capacity(2);
        receiver.ingest(&mut b"\r\n".iter(), &mut primer);
        BodyReceiver::Data(receiver)
    }

    /// A receiver for one BDAT chunk of `chunk_size_bytes`.
    pub(crate) fn bdat(chunk_size_bytes: usize) -> BodyReceiver {
        BodyReceiver::Bdat(BdatReceiver::new(chunk_size_bytes, false))
    }

    /// Move body bytes from `bytes` into `sink`; true once the body (or chunk) is complete.
    pub(crate) fn ingest(&mut self, bytes: &mut Iter<'_, u8>, sink: &mut Vec<u8>) -> bool {
        match self {
            BodyReceiver::Data(receiver) => receiver.ingest(bytes, sink),
            BodyReceiver::Bdat(receiver) => receiver.ingest(bytes, sink),
        }
    }
}

/// The body of the current transaction, with its limits.
#[derive(Debug)]
pub(crate) struct MessageBody {
    bytes: Vec<u8>,
    size_max_bytes: usize,
    line_max_bytes: usize,
    /// Length of the last, still unterminated line in `bytes`.
    line_len_bytes: usize,
    /// Prefix of `bytes` already checked for line lengths.
    scanned_bytes: usize,
    /// Prefix of `bytes` already checked for bare CR and LF; a CR at the very end
    /// waits here until the byte after it (or the end of the message) is known.
    newline_scanned_bytes: usize,
    fault: Option<BodyFault>,
}

impl MessageBody {
    /// An empty body with `size_max_bytes` and `line_max_bytes` (CRLF included).
    pub(crate) fn new(size_max_bytes: usize, line_max_bytes: usize) -> MessageBody {
        MessageBody {
            bytes: Vec::new(),
            size_max_bytes,
            line_max_bytes,
            line_len_bytes: 0,
            scanned_bytes: 0,
            newline_scanned_bytes: 0,
            fault: None,
        }
    }

    /// How many input bytes a receiver may be given before [`MessageBody::check`] must
    /// run. Receivers never output more than they take in, and a DATA receiver may
    /// later take back one byte (the CR of the final `.<CRLF>`), so allowing the body
    /// to reach `size_max_bytes + 2` keeps the verdict exact while bounding memory.
    pub(crate) fn room_bytes(&self) -> usize {
        if self.fault.is_some() {
            return usize::MAX;
        }
        self.size_max_bytes
            .saturating_add(2)
            .saturating_sub(self.bytes.len())
    }

    /// Where a receiver should put bytes: the body, or nowhere (`None`) once it failed.
    pub(crate) fn sink(&mut self) -> Option<&mut Vec<u8>> {
        match self.fault {
            None => Some(&mut self.bytes),
            Some(_) => None,
        }
    }

    /// Check the limits after a receiver added bytes; `complete` says whether the body
    /// (or, for BDAT, the chunk) is now complete.
    pub(crate) fn check(&mut self, complete: bool) {
        if self.fault.is_some() {
            return;
        }
        // A DATA receiver may have taken back a byte it had already handed over.
        self.scanned_bytes = self.scanned_bytes.min(self.bytes.len());
        self.newline_scanned_bytes = self.newline_scanned_bytes.min(self.bytes.len());
        let size_allowed_bytes = if complete {
            self.size_max_bytes
        } else {
            self.size_max_bytes.saturating_add(1)
        };
        if self.bytes.len() > size_allowed_bytes {
            self.fail(BodyFault::TooLarge);
            return;
        }
        if !self.newlines_paired() {
            self.fail(BodyFault::BareNewline);
            return;
        }
        let mut rest = &self.bytes[self.scanned_bytes..];
        while let Some(pos) = memchr::memchr(b'\n', rest) {
            if self.line_len_bytes + pos + 1 > self.line_max_bytes {
                self.fail(BodyFault::LineTooLong);
                return;
            }
            self.line_len_bytes = 0;
            rest = &rest[pos + 1..];
        }
        self.line_len_bytes += rest.len();
        self.scanned_bytes = self.bytes.len();
        // An unterminated line already over the limit can only get longer.
        if self.line_len_bytes > self.line_max_bytes {
            self.fail(BodyFault::LineTooLong);
        }
    }

    /// Scan the new bytes: every LF must follow a CR and every CR precede an LF. A
    /// final CR is left for later (its LF may be in the next input).
    fn newlines_paired(&mut self) -> bool {
        let bytes = &self.bytes;
        let mut i = self.newline_scanned_bytes;
        while let Some(pos) = memchr::memchr2(b'\r', b'\n', &bytes[i..]) {
            let at = i + pos;
            if bytes[at] == b'\n' {
                if at == 0 || bytes[at - 1] != b'\r' {
                    return false;
                }
            } else {
                match bytes.get(at + 1) {
                    Some(b'\n') => {}
                    Some(_) => return false,
                    None => {
                        self.newline_scanned_bytes = at;
                        return true;
                    }
                }
            }
            i = at + 1;
        }
        self.newline_scanned_bytes = bytes.len();
        true
    }

    /// The message is complete: a CR left at its very end is bare too.
    pub(crate) fn finish(&mut self) {
        if self.fault.is_none() && self.bytes.last() == Some(&b'\r') {
            self.fail(BodyFault::BareNewline);
        }
    }

    /// A BDAT chunk of `chunk_bytes` was announced: refuse the message now if it
    /// cannot fit, so the verdict is about size (not whatever the chunk would break
    /// first) and none of the chunk is kept.
    pub(crate) fn announce_chunk(&mut self, chunk_bytes: usize) {
        if self.fault.is_none()
            && self.bytes.len().saturating_add(chunk_bytes) > self.size_max_bytes
        {
            self.fail(BodyFault::TooLarge);
        }
    }

    fn fail(&mut self, fault: BodyFault) {
        self.fault = Some(fault);
        // The message is refused: give the memory back now, not at the end of the data.
        self.bytes = Vec::new();
    }

    /// Why the body was refused, if it was.
    pub(crate) fn fault(&self) -> Option<BodyFault> {
        self.fault
    }

    /// Bytes received so far.
    #[cfg(test)]
    pub(crate) fn len_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// The received bytes.
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `chunks` through a DATA receiver the way the session does; returns the
    /// body, whether the end was seen, and how many input bytes were left over.
    fn receive_data(chunks: &[&[u8]], body: &mut MessageBody) -> (bool, usize) {
        let mut receiver = BodyReceiver::data();
        let mut scratch = Vec::new();
        for (index, chunk) in chunks.iter().enumerate() {
            let mut input: &[u8] = chunk;
            while !input.is_empty() {
                let feed = &input[..input.len().min(body.room_bytes())];
                let mut iter = feed.iter();
                let done = match body.sink() {
                    Some(sink) => receiver.ingest(&mut iter, sink),
                    None => {
                        scratch.clear();
                        receiver.ingest(&mut iter, &mut scratch)
                    }
                };
                let consumed = feed.len() - iter.len();
                body.check(done);
                input = &input[consumed..];
                if done {
                    let rest: usize = chunks[index + 1..].iter().map(|c| c.len()).sum();
                    return (true, input.len() + rest);
                }
            }
        }
        (false, 0)
    }

    #[test]
    fn dot_unstuffing_including_first_line() {
        let mut body = MessageBody::new(1000, 1000);
        let (done, left) = receive_data(&[b"..first\r\nmid\r\n...\r\n.\r\nQUIT\r\n"], &mut body);
        assert!(done);
        assert_eq!(left, b"QUIT\r\n".len());
        assert_eq!(body.into_bytes(), b".first\r\nmid\r\n..\r\n");
    }

    #[test]
    fn empty_message_ends_at_once() {
        let mut body = MessageBody::new(1000, 1000);
        let (done, left) = receive_data(&[b".\r\n"], &mut body);
        assert!(done);
        assert_eq!(left, 0);
        assert_eq!(body.len_bytes(), 0);
    }

    #[test]
    fn bare_lf_dot_does_not_end_data() {
        let mut body = MessageBody::new(1000, 1000);
        let (done, _) = receive_data(&[b"a\n.\nb\n.\r\nc\r\n"], &mut body);
        assert!(!done, "only <CRLF>.<CRLF> ends the data");
        let (done, _) = receive_data(&[b"x\r\n.\r\n"], &mut body);
        assert!(done);
    }

    #[test]
    fn split_terminator_across_chunks() {
        let mut body = MessageBody::new(1000, 1000);
        let (done, left) = receive_data(&[b"hi\r", b"\n", b".", b"\r", b"\nNOOP\r\n"], &mut body);
        assert!(done);
        assert_eq!(left, 6);
        assert_eq!(body.into_bytes(), b"hi\r\n");
    }

    #[test]
    fn body_of_exactly_the_maximum_is_accepted() {
        let text = b"0123456\r\n"; // 9 bytes
        let mut body = MessageBody::new(9, 1000);
        let (done, _) = receive_data(&[text, b".\r\n"], &mut body);
        assert!(done);
        assert_eq!(body.fault(), None);
        assert_eq!(body.into_bytes(), text);
    }

    #[test]
    fn body_one_over_the_maximum_is_refused_and_not_kept() {
        let mut body = MessageBody::new(8, 1000);
        let (done, left) = receive_data(&[b"0123456\r\n.\r\nNOOP\r\n"], &mut body);
        assert!(done);
        assert_eq!(left, 6);
        assert_eq!(body.fault(), Some(BodyFault::TooLarge));
        assert_eq!(body.len_bytes(), 0);
    }

    #[test]
    fn large_body_is_never_buffered_past_the_limit() {
        let mut body = MessageBody::new(100, 1000);
        let mut receiver = BodyReceiver::data();
        let line = b"0123456789012345678\r\n".repeat(50);
        let feed = &line[..line.len().min(body.room_bytes())];
        let mut iter = feed.iter();
        let sink = body.sink().unwrap();
        receiver.ingest(&mut iter, sink);
        assert!(body.len_bytes() <= 102);
        body.check(false);
        assert_eq!(body.fault(), Some(BodyFault::TooLarge));
    }

    #[test]
    fn line_limit_counts_crlf() {
        let ok = [vec![b'a'; 998], b"\r\n".to_vec()].concat();
        let mut body = MessageBody::new(10_000, 1000);
        let (done, _) = receive_data(&[&ok, b".\r\n"], &mut body);
        assert!(done);
        assert_eq!(body.fault(), None);

        let long = [vec![b'a'; 999], b"\r\n".to_vec()].concat();
        let mut body = MessageBody::new(10_000, 1000);
        let (done, _) = receive_data(&[&long[..500], &long[500..], b".\r\n"], &mut body);
        assert!(done);
        assert_eq!(body.fault(), Some(BodyFault::LineTooLong));
    }

    #[test]
    fn stuffed_dot_does_not_count_towards_line_length() {
        // 999 bytes on the wire, 998 after unstuffing, plus CRLF: allowed.
        let line = [b"..".to_vec(), vec![b'a'; 997], b"\r\n".to_vec()].concat();
        let mut body = MessageBody::new(10_000, 1000);
        let (done, _) = receive_data(&[&line, b".\r\n"], &mut body);
        assert!(done);
        assert_eq!(body.fault(), None);
        assert_eq!(body.len_bytes(), 1000);
    }

    #[test]
    fn bdat_chunk_is_taken_verbatim() {
        let mut receiver = BodyReceiver::bdat(7);
        let mut body = MessageBody::new(100, 1000);
        let input = b"a\r\n.\r\nbQUIT\r\n";
        let mut iter = input.iter();
        let done = receiver.ingest(&mut iter, body.sink().unwrap());
        body.check(done);
        assert!(done);
        assert_eq!(iter.as_slice(), b"QUIT\r\n");
        assert_eq!(body.into_bytes(), b"a\r\n.\r\nb");
    }

    #[test]
    fn unterminated_bdat_line_over_limit_fails() {
        let mut receiver = BodyReceiver::bdat(20);
        let mut body = MessageBody::new(100, 10);
        let input = [b'x'; 20];
        let mut iter = input.iter();
        let done = receiver.ingest(&mut iter, body.sink().unwrap());
        body.check(done);
        assert_eq!(body.fault(), Some(BodyFault::LineTooLong));
    }
}
