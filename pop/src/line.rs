//! Splits the client's byte stream into command lines, with a hard cap on line
//! length. Sans-IO: the driver reads into [`LineReader::buf_mut`] and then drains
//! [`LineReader::next_frame`] until it returns `None`.

use bytes::BytesMut;

/// One unit of client input.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete line, without its line ending (CRLF or a bare LF).
    Line(BytesMut),
    /// A line longer than the limit; it has been discarded up to and including its LF.
    TooLong,
}

/// Incremental line splitter with a maximum line length.
#[derive(Debug)]
pub struct LineReader {
    buf: BytesMut,
    /// Longest accepted line in bytes, line ending included.
    line_bytes_max: usize,
    /// Inside an over-long line: drop bytes until its LF.
    discarding: bool,
}

impl LineReader {
    /// A reader accepting lines of at most `line_bytes_max` bytes, line ending included.
    pub fn new(line_bytes_max: usize) -> Self {
        LineReader {
            buf: BytesMut::with_capacity(line_bytes_max.clamp(64, 8192)),
            // A line needs room for at least its LF.
            line_bytes_max: line_bytes_max.max(1),
            discarding: false,
        }
    }

    /// The buffer to read new input into.
    pub fn buf_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Drop everything buffered (input received in the clear before STLS).
    pub fn clear(&mut self) -> usize {
        let dropped_bytes = self.buf.len();
        self.buf.clear();
        self.discarding = false;
        dropped_bytes
    }

    /// Whether a complete frame is ready without further input.
    #[cfg(test)]
    fn has_frame(&self) -> bool {
        // Any LF ends either a line or an over-long line being discarded.
        self.buf.contains(&b'\n')
    }

    /// Take the next complete frame, or `None` if more input is needed.
    pub fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if self.discarding {
                match self.buf.iter().position(|&b| b == b'\n') {
                    Some(lf) => {
                        let _ = self.buf.split_to(lf + 1);
                        self.discarding = false;
                        return Some(Frame::TooLong);
                    }
                    None => {
                        // Nothing of this line is kept, so memory stays bounded.
                        self.buf.clear();
                        return None;
                    }
                }
            }
            let window = self.buf.len().min(self.line_bytes_max);
            if let Some(lf) = self.buf[..window].iter().position(|&b| b == b'\n') {
                let mut line = self.buf.split_to(lf + 1);
                line.truncate(lf);
                if line.last() == Some(&b'\r') {
                    line.truncate(lf - 1);
                }
                return Some(Frame::Line(line));
            }
            if self.buf.len() >= self.line_bytes_max {
                self.discarding = true;
                continue;
            }
            return None;
        }
    }

    /// Whether part of a line (kept or being discarded) has arrived.
    pub fn mid_line(&self) -> bool {
        self.discarding || !self.buf.is_empty()
    }

    /// Bytes of an unfinished line held back.
    #[cfg(test)]
    fn pending_bytes(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(reader: &mut LineReader, bytes: &[u8]) {
        reader.buf_mut().extend_from_slice(bytes);
    }

    fn line(s: &[u8]) -> Option<Frame> {
        Some(Frame::Line(BytesMut::from(s)))
    }

    #[test]
    fn splits_crlf_and_bare_lf_lines() {
        let mut r = LineReader::new(512);
        feed(&mut r, b"STAT\r\nLIST 1\nNO");
        assert!(r.has_frame());
        assert_eq!(r.next_frame(), line(b"STAT"));
        assert_eq!(r.next_frame(), line(b"LIST 1"));
        assert!(!r.has_frame());
        assert_eq!(r.next_frame(), None);
        feed(&mut r, b"OP\r\n");
        assert_eq!(r.next_frame(), line(b"NOOP"));
        assert_eq!(r.next_frame(), None);
        assert_eq!(r.pending_bytes(), 0);
    }

    #[test]
    fn line_of_exactly_the_limit_is_accepted() {
        let mut r = LineReader::new(8);
        feed(&mut r, b"ABCDEF\r\n");
        assert_eq!(r.next_frame(), line(b"ABCDEF"));
    }

    #[test]
    fn line_one_over_the_limit_is_too_long() {
        let mut r = LineReader::new(8);
        feed(&mut r, b"ABCDEFG\r\nNOOP\r\n");
        assert!(r.has_frame());
        assert_eq!(r.next_frame(), Some(Frame::TooLong));
        assert_eq!(r.next_frame(), line(b"NOOP"));
    }

    #[test]
    fn long_line_is_discarded_across_reads_and_reported_at_its_end() {
        let mut r = LineReader::new(8);
        feed(&mut r, b"0123456789");
        assert!(!r.has_frame());
        assert_eq!(r.next_frame(), None);
        feed(&mut r, &[b'x'; 10_000]);
        assert_eq!(r.next_frame(), None);
        // Discarded bytes are not kept.
        assert_eq!(r.pending_bytes(), 0);
        feed(&mut r, b"yyy\r\nQUIT\r\n");
        assert_eq!(r.next_frame(), Some(Frame::TooLong));
        assert_eq!(r.next_frame(), line(b"QUIT"));
        assert_eq!(r.next_frame(), None);
    }

    #[test]
    fn keeps_eight_bit_bytes_and_inner_cr() {
        let mut r = LineReader::new(64);
        feed(&mut r, b"PASS \xff\r\xfe\r\n");
        assert_eq!(r.next_frame(), line(b"PASS \xff\r\xfe"));
    }
}
