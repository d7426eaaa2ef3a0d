//! Encoding of multi-line responses (RFC 1939 section 3): byte-stuffing, the
//! terminator, and where TOP cuts a message. Pure: no state, no I/O.
//!
//! Lines are split on LF only and bytes are copied untouched, so after the client
//! removes the stuffing it holds exactly the stored bytes (8-bit safe).

use bytes::BytesMut;

/// Append `data` to `out`, doubling a `.` that begins a line.
///
/// `at_line_start` says whether `data[0]` begins a line; the return value says
/// whether the byte after `data` would, so a message can be stuffed in chunks.
pub fn stuff_into(out: &mut BytesMut, data: &[u8], mut at_line_start: bool) -> bool {
    out.reserve(data.len() + data.len() / 64 + 2);
    let mut rest = data;
    while !rest.is_empty() {
        if at_line_start && rest[0] == b'.' {
            out.extend_from_slice(b".");
        }
        // Copy through the end of this line in one go.
        match rest.iter().position(|&b| b == b'\n') {
            Some(lf) => {
                out.extend_from_slice(&rest[..=lf]);
                rest = &rest[lf + 1..];
                at_line_start = true;
            }
            None => {
                out.extend_from_slice(rest);
                rest = &[];
                at_line_start = false;
            }
        }
    }
    at_line_start
}

/// Append the end of a multi-line response for `body`: a CRLF first when the body
/// is not empty and does not already end with one (so the terminator starts a
/// line), then `.` CRLF.
pub fn terminate(out: &mut BytesMut, body: &[u8]) {
    if !body.is_empty() && !body.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

/// How many leading bytes of `message` TOP sends: the header block, the blank line
/// after it, and the first `body_lines` lines of the body (the whole message if it
/// has fewer, or no blank line at all).
pub fn top_length(message: &[u8], body_lines: usize) -> usize {
    let next_line_end = |from: usize| {
        message[from..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|lf| from + lf + 1)
    };
    let mut pos = 0;
    loop {
        let Some(end) = next_line_end(pos) else {
            return message.len();
        };
        let line = &message[pos..end - 1];
        pos = end;
        if line.is_empty() || line == b"\r" {
            break;
        }
    }
    for _ in 0..body_lines {
        if pos >= message.len() {
            break;
        }
        match next_line_end(pos) {
            Some(end) => pos = end,
            None => return message.len(),
        }
    }
    pos
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a client does: split on the terminator and remove the stuffing.
    fn unstuff(wire: &[u8]) -> Vec<u8> {
        assert!(wire.ends_with(b".\r\n"), "no terminator in {wire:?}");
        let body = &wire[..wire.len() - 3];
        assert!(body.is_empty() || body.ends_with(b"\r\n"));
        let mut out = Vec::new();
        let mut at_line_start = true;
        for &b in body {
            if !(at_line_start && b == b'.') {
                out.push(b);
                at_line_start = b == b'\n';
            } else {
                // A stuffed dot: drop it, the next byte is the real one.
                at_line_start = false;
            }
        }
        out
    }

    fn encode(body: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        stuff_into(&mut out, body, true);
        terminate(&mut out, body);
        out.to_vec()
    }

    #[test]
    fn stuffs_dots_at_line_start_only() {
        let body = b".first\r\nmid.dle\r\n..two\r\n.\r\nend.\r\n";
        assert_eq!(
            encode(body),
            b"..first\r\nmid.dle\r\n...two\r\n..\r\nend.\r\n.\r\n".to_vec()
        );
        assert_eq!(unstuff(&encode(body)), body.to_vec());
    }

    #[test]
    fn adds_crlf_when_missing() {
        assert_eq!(encode(b"no newline"), b"no newline\r\n.\r\n".to_vec());
        assert_eq!(encode(b"bare lf\n"), b"bare lf\n\r\n.\r\n".to_vec());
        assert_eq!(encode(b""), b".\r\n".to_vec());
    }

    #[test]
    fn bare_lf_lines_are_stuffed_too() {
        assert_eq!(encode(b"a\n.b\r\n"), b"a\n..b\r\n.\r\n".to_vec());
    }

    #[test]
    fn eight_bit_bytes_survive() {
        let body: Vec<u8> = (0u8..=255).chain(b"\r\n".iter().copied()).collect();
        assert_eq!(unstuff(&encode(&body)), body);
    }

    #[test]
    fn chunked_stuffing_equals_whole() {
        let body = b"x\r\n.a\r\n.\r\n..\r\nlast.\r\n.tail";
        let whole = encode(body);
        for chunk_size in 1..body.len() {
            let mut out = BytesMut::new();
            let mut at_line_start = true;
            for chunk in body.chunks(chunk_size) {
                at_line_start = stuff_into(&mut out, chunk, at_line_start);
            }
            terminate(&mut out, body);
            assert_eq!(out.to_vec(), whole, "chunk size {chunk_size}");
        }
    }

    #[test]
    fn top_cuts_after_header_blank_line_and_k_body_lines() {
        let msg = b"From: a\r\nSubject: s\r\n\r\nline1\r\nline2\r\nline3";
        let headers_len = b"From: a\r\nSubject: s\r\n\r\n".len();
        assert_eq!(top_length(msg, 0), headers_len);
        assert_eq!(top_length(msg, 1), headers_len + b"line1\r\n".len());
        assert_eq!(
            top_length(msg, 2),
            headers_len + b"line1\r\nline2\r\n".len()
        );
        assert_eq!(top_length(msg, 3), msg.len());
        assert_eq!(top_length(msg, usize::MAX), msg.len());
    }

    #[test]
    fn top_with_bare_lf_and_without_body() {
        let msg = b"A: 1\n\nb1\nb2\n";
        assert_eq!(top_length(msg, 0), 6);
        assert_eq!(top_length(msg, 1), 9);
        assert_eq!(top_length(msg, 5), msg.len());
        let headers_only = b"A: 1\r\nB: 2\r\n";
        assert_eq!(top_length(headers_only, 0), headers_only.len());
        let empty_body = b"A: 1\r\n\r\n";
        assert_eq!(top_length(empty_body, 3), empty_body.len());
        assert_eq!(top_length(b"", 3), 0);
    }
}
