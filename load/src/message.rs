//! Messages: build one (headers + a body cut from a shared text block), its integrity
//! header `X-Porcupine-Load: <run>-<id> <body hash, 16 hex digits>`, SMTP dot-stuffing
//! on the way out, POP3 dot-unstuffing on the way back, and the check of what came back.

use std::io::Write;

use crate::rng::Rng;

/// Name of the integrity header.
pub const LOAD_HEADER: &str = "X-Porcupine-Load";
/// Bytes of the shared text that bodies are cut from.
const TEXT_BYTES: usize = 1 << 20;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The body hash of the load header: FNV-1a's constants applied to 64-bit words, eight
/// times fewer serial steps than byte-wise FNV-1a (which cost a fifth of the generator's
/// CPU). `h = 0xcbf29ce484222325`; for each little-endian 8-byte word `w` of the body
/// (the last 0–7 bytes zero-padded into one more word): `h = (h ^ w) * 0x100000001b3;
/// h ^= h >> 32`; then `h ^= len; h *= 0x9e3779b97f4a7c15; h ^= h >> 32` (all mod 2^64).
/// Every step is a bijection of `h`, so changing any one word always changes the hash.
pub fn body_hash(bytes: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    let mut words = bytes.chunks_exact(8);
    let mut mix = |w: u64| {
        h = (h ^ w).wrapping_mul(FNV_PRIME);
        h ^= h >> 32;
    };
    for c in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        mix(u64::from_le_bytes(w));
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        let mut w = [0u8; 8];
        w[..tail.len()].copy_from_slice(tail);
        mix(u64::from_le_bytes(w));
    }
    h ^= bytes.len() as u64;
    h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^ (h >> 32)
}

/// Index of the first `needle` in `hay`, eight bytes at a time (SWAR).
pub fn find_byte(hay: &[u8], needle: u8) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let pattern = LO * needle as u64;
    let mut at = 0;
    for c in hay.chunks_exact(8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let x = u64::from_le_bytes(w) ^ pattern;
        // Non-zero iff some byte of x is zero, i.e. some byte equals the needle.
        if x.wrapping_sub(LO) & !x & HI != 0 {
            break;
        }
        at += 8;
    }
    hay[at..].iter().position(|&b| b == needle).map(|p| at + p)
}

/// A message's identity: the run that sent it and its number in that run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LoadId {
    /// Random per `porcupine load` run.
    pub run: u64,
    /// 0, 1, 2, ... within the run.
    pub id: u64,
}

/// What a retrieved message turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Carries a load header and its body matches the hash.
    Intact(LoadId),
    /// Carries a load header but the body (or the header itself) does not match;
    /// the id when it could still be read.
    Corrupt(Option<LoadId>),
    /// No load header: not a message of any load run.
    Unmarked,
}

/// The text bodies are cut from: CRLF lines of words, some starting with `.` (so
/// every message exercises dot-stuffing), shared read-only by every session.
#[derive(Debug)]
pub struct TextBlock {
    bytes: Vec<u8>,
    line_starts: Vec<u32>,
}

impl TextBlock {
    /// The block for this seed (about 1 MiB; built once per run).
    pub fn new(seed: u64) -> TextBlock {
        const WORDS: &[&str] = &[
            "mail",
            "cluster",
            "node",
            "porcupine",
            "replica",
            "fsync",
            "user",
            "map",
            "the",
            "of",
            "and",
            "a",
            "to",
            "in",
            "is",
            "quill",
            "SMTP",
            "POP3",
            "view",
            "epoch",
            "bucket",
            "load",
            "disk",
            "copy",
            "spread",
            "fragment",
            "hash",
        ];
        let mut rng = Rng::new(seed ^ 0x7465_7874);
        let mut bytes = Vec::with_capacity(TEXT_BYTES + 128);
        let mut line_starts = Vec::new();
        while bytes.len() < TEXT_BYTES {
            line_starts.push(bytes.len() as u32);
            match rng.below(24) {
                0 => bytes.extend_from_slice(b"."),
                1 => bytes.extend_from_slice(b".."),
                2 | 3 => bytes.extend_from_slice(b".leading dot"),
                _ => {}
            }
            let width = 20 + rng.below(57) as usize;
            let start = bytes.len();
            while bytes.len() - start < width {
                let w = WORDS[rng.below(WORDS.len() as u64) as usize];
                bytes.extend_from_slice(w.as_bytes());
                bytes.push(b' ');
            }
            bytes.extend_from_slice(b"\r\n");
        }
        TextBlock { bytes, line_starts }
    }

    /// Append `len` bytes of text starting at a random line, ending in CRLF.
    fn append_body(&self, out: &mut Vec<u8>, len: usize, rng: &mut Rng) {
        let len = len.max(2);
        let mut at = self.line_starts[rng.below(self.line_starts.len() as u64) as usize] as usize;
        let mut left = len - 2;
        while left > 0 {
            let n = left.min(self.bytes.len() - at);
            out.extend_from_slice(&self.bytes[at..at + n]);
            left -= n;
            at = 0;
        }
        // A cut right after CR would leave a bare CR before the final CRLF.
        if out.last() == Some(&b'\r') {
            *out.last_mut().expect("just checked") = b'x';
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Everything one message needs besides its text.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    /// Its identity.
    pub load_id: LoadId,
    /// `From:` address.
    pub from: &'a str,
    /// `To:` address.
    pub to: &'a str,
    /// Whole message, header section included, bytes (a floor of one header section).
    pub size_bytes: u64,
    /// Seconds since the Unix epoch, for `Date:`.
    pub unix_secs: u64,
}

/// Build one message into `out` (cleared first): the header section with a placeholder
/// hash, the body, then the hash patched in place. No allocation once `out` is big enough.
pub fn build(out: &mut Vec<u8>, env: &Envelope<'_>, text: &TextBlock, rng: &mut Rng) {
    out.clear();
    let LoadId { run, id } = env.load_id;
    // Writes into a Vec cannot fail.
    let _ = write!(
        out,
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: porcupine load {run:016x}-{id}\r\n\
         Message-ID: <{run:016x}.{id}@porcupine-load>\r\nDate: ",
        from = env.from,
        to = env.to,
    );
    write_date(out, env.unix_secs);
    let _ = write!(out, "\r\n{LOAD_HEADER}: {run:016x}-{id} ");
    let hash_at = out.len();
    out.extend_from_slice(b"0000000000000000\r\n\r\n");
    let body_at = out.len();
    let body_len = (env.size_bytes as usize).saturating_sub(body_at);
    text.append_body(out, body_len, rng);
    let hash = body_hash(&out[body_at..]);
    let mut hex = [0u8; 16];
    hex16(hash, &mut hex);
    out[hash_at..hash_at + 16].copy_from_slice(&hex);
}

fn hex16(v: u64, out: &mut [u8; 16]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, o) in out.iter_mut().enumerate() {
        *o = DIGITS[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
}

/// `Date:` value (RFC 5322, UTC) for this Unix time.
fn write_date(out: &mut Vec<u8>, unix_secs: u64) {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let _ = write!(
        out,
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[(days.rem_euclid(7)) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
}

/// Append `msg` to `out` as SMTP DATA content: a `.` doubled at every line start, a
/// final CRLF if missing, then the `.` line. Copies runs between line-start dots.
pub fn dot_stuff_into(msg: &[u8], out: &mut Vec<u8>) {
    out.reserve(msg.len() + 64);
    let mut run = 0; // start of the bytes not yet copied
    let mut from = 0; // where to look for the next dot
    while let Some(p) = find_byte(&msg[from..], b'.') {
        let at = from + p;
        if at == 0 || msg[at - 1] == b'\n' {
            out.extend_from_slice(&msg[run..at]);
            out.push(b'.');
            run = at;
        }
        from = at + 1;
    }
    out.extend_from_slice(&msg[run..]);
    if !msg.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

/// One line of a POP3 multi-line answer, unstuffed: `None` for the terminating `.`
/// line, else the line with one leading `.` removed if it had one.
pub fn unstuff_line(line: &[u8]) -> Option<&[u8]> {
    if line == b".\r\n" || line == b".\n" || line == b"." {
        return None;
    }
    Some(line.strip_prefix(b".").unwrap_or(line))
}

/// Unstuff a whole multi-line answer body (the lines after `+OK`); `None` when the
/// terminating `.` line is missing.
pub fn dot_unstuff(wire: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(wire.len());
    for line in wire.split_inclusive(|&b| b == b'\n') {
        match unstuff_line(line) {
            None => return Some(out),
            Some(l) => out.extend_from_slice(l),
        }
    }
    None
}

/// Check one retrieved message (already unstuffed) against its integrity header.
pub fn verify(msg: &[u8]) -> Verdict {
    let Some(split) = find(msg, b"\r\n\r\n") else {
        return match header_value(msg) {
            Some(v) => Verdict::Corrupt(parse_value(v).map(|(id, _)| id)),
            None => Verdict::Unmarked,
        };
    };
    let (head, body) = (&msg[..split + 2], &msg[split + 4..]);
    let Some(value) = header_value(head) else {
        return Verdict::Unmarked;
    };
    match parse_value(value) {
        Some((id, hash)) if hash == body_hash(body) => Verdict::Intact(id),
        Some((id, _)) => Verdict::Corrupt(Some(id)),
        None => Verdict::Corrupt(None),
    }
}

/// The value of the load header in a header section, trimmed.
fn header_value(head: &[u8]) -> Option<&[u8]> {
    let name = LOAD_HEADER.as_bytes();
    for line in head.split(|&b| b == b'\n') {
        if line.len() > name.len()
            && line[..name.len()].eq_ignore_ascii_case(name)
            && line[name.len()] == b':'
        {
            return Some(line[name.len() + 1..].trim_ascii());
        }
    }
    None
}

/// `<run hex>-<id> <hash hex>`.
fn parse_value(v: &[u8]) -> Option<(LoadId, u64)> {
    let text = std::str::from_utf8(v).ok()?;
    let (key, hash) = text.split_once(' ')?;
    let (run, id) = key.split_once('-')?;
    let load_id = LoadId {
        run: u64::from_str_radix(run, 16).ok()?,
        id: id.parse().ok()?,
    };
    Some((load_id, u64::from_str_radix(hash.trim(), 16).ok()?))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(size_bytes: u64, id: u64) -> Vec<u8> {
        let text = TextBlock::new(1);
        let mut rng = Rng::new(id);
        let mut out = Vec::new();
        let env = Envelope {
            load_id: LoadId { run: 0xabc, id },
            from: "load@sender.test",
            to: "u1@load.test",
            size_bytes,
            unix_secs: 1_764_654_480,
        };
        build(&mut out, &env, &text, &mut rng);
        out
    }

    /// The hash as its doc defines it, a byte at a time (the reference for other tools).
    fn reference_hash(bytes: &[u8]) -> u64 {
        let mut padded = bytes.to_vec();
        padded.resize(bytes.len().div_ceil(8) * 8, 0);
        let mut h = FNV_OFFSET;
        for w in padded.chunks(8) {
            let w = w.iter().rev().fold(0u64, |acc, &b| (acc << 8) | b as u64);
            h = (h ^ w).wrapping_mul(FNV_PRIME);
            h ^= h >> 32;
        }
        h ^= bytes.len() as u64;
        h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^ (h >> 32)
    }

    #[test]
    fn body_hash_matches_its_definition_and_sees_every_flip() {
        for len in [0, 1, 7, 8, 9, 63, 64, 4096] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            assert_eq!(body_hash(&data), reference_hash(&data), "len {len}");
        }
        assert_ne!(body_hash(b""), body_hash(b"\0"), "length counts");
        let data: Vec<u8> = (0..300u32).map(|i| (i % 251) as u8).collect();
        let h = body_hash(&data);
        for at in 0..data.len() {
            for bit in 0..8 {
                let mut d = data.clone();
                d[at] ^= 1 << bit;
                assert_ne!(body_hash(&d), h, "flip byte {at} bit {bit}");
            }
        }
    }

    #[test]
    fn find_byte_finds_the_first() {
        let hay = b"abcdefghijklmnopqrstuvwxyz.abc.";
        for start in 0..hay.len() {
            let want = hay[start..].iter().position(|&b| b == b'.');
            assert_eq!(find_byte(&hay[start..], b'.'), want);
        }
        assert_eq!(find_byte(b"", b'.'), None);
        assert_eq!(find_byte(&[0x80u8; 20], 0x00), None);
        assert_eq!(find_byte(b"\x01\x00", 0x00), Some(1));
    }

    #[test]
    fn header_round_trip() {
        for (size, id) in [(512, 0), (4096, 7), (100_000, 123_456_789)] {
            let msg = one(size, id);
            assert_eq!(msg.len() as u64, size, "size is the whole message");
            assert!(msg.ends_with(b"\r\n"));
            assert_eq!(verify(&msg), Verdict::Intact(LoadId { run: 0xabc, id }));
            let text = String::from_utf8_lossy(&msg);
            for h in [
                "From: ",
                "To: ",
                "Subject: ",
                "Message-ID: ",
                "Date: ",
                "X-Porcupine-Load: ",
            ] {
                assert!(
                    text.contains(&format!("\r\n{h}")) || text.starts_with(h),
                    "{h}"
                );
            }
            // Every line fits SMTP's 1000-byte limit and no bare CR/LF appears.
            for line in msg.split_inclusive(|&b| b == b'\n') {
                assert!(line.len() <= 1000 && line.ends_with(b"\r\n"));
                assert!(!line[..line.len() - 2].contains(&b'\r'));
            }
        }
    }

    #[test]
    fn date_is_rfc5322() {
        let mut out = Vec::new();
        write_date(&mut out, 1_764_654_480);
        assert_eq!(out, b"Tue, 02 Dec 2025 05:48:00 +0000");
        out.clear();
        write_date(&mut out, 951_782_400); // a leap day
        assert_eq!(out, b"Tue, 29 Feb 2000 00:00:00 +0000");
    }

    #[test]
    fn any_body_change_is_corrupt() {
        let msg = one(4096, 5);
        let body_at = find(&msg, b"\r\n\r\n").unwrap() + 4;
        for at in [body_at, body_at + 100, msg.len() - 3] {
            let mut bad = msg.clone();
            bad[at] ^= 0x01;
            let id = LoadId { run: 0xabc, id: 5 };
            assert_eq!(verify(&bad), Verdict::Corrupt(Some(id)), "flip at {at}");
        }
        let mut short = msg.clone();
        short.truncate(msg.len() - 10);
        assert!(matches!(verify(&short), Verdict::Corrupt(_)));
    }

    #[test]
    fn trace_headers_in_front_do_not_matter() {
        let msg = one(2000, 9);
        let mut stored =
            b"Return-Path: <load@sender.test>\r\nReceived: from x by y; date\r\n".to_vec();
        stored.extend_from_slice(&msg);
        assert!(matches!(verify(&stored), Verdict::Intact(_)));
        assert_eq!(verify(b"Subject: hi\r\n\r\nbody\r\n"), Verdict::Unmarked);
        assert_eq!(
            verify(b"X-Porcupine-Load: zz\r\n\r\nbody\r\n"),
            Verdict::Corrupt(None)
        );
    }

    #[test]
    fn bodies_exercise_dot_stuffing() {
        let msg = one(100_000, 3);
        assert!(
            msg.windows(3).any(|w| w == b"\n.."),
            "some line starts with a dot"
        );
    }

    #[test]
    fn dot_stuffing_round_trip() {
        let cases: &[&[u8]] = &[
            b"a\r\n.\r\n..\r\n.x\r\nb\r\n",
            b".starts\r\n",
            b"no final crlf",
            b"\r\n",
            b"",
        ];
        for &case in cases {
            let mut wire = Vec::new();
            dot_stuff_into(case, &mut wire);
            assert!(wire.ends_with(b"\r\n.\r\n") || wire == b"\r\n.\r\n");
            let back = dot_unstuff(&wire).expect("terminated");
            let mut want = case.to_vec();
            if !want.ends_with(b"\r\n") {
                want.extend_from_slice(b"\r\n");
            }
            assert_eq!(back, want, "{:?}", String::from_utf8_lossy(case));
        }
        let msg = one(50_000, 11);
        let mut wire = Vec::new();
        dot_stuff_into(&msg, &mut wire);
        assert!(wire.len() > msg.len() + 3, "dots were doubled");
        assert_eq!(dot_unstuff(&wire).unwrap(), msg);
    }

    #[test]
    fn unstuffing_by_line() {
        assert_eq!(unstuff_line(b".\r\n"), None);
        assert_eq!(unstuff_line(b"..\r\n"), Some(&b".\r\n"[..]));
        assert_eq!(unstuff_line(b"...x\r\n"), Some(&b"..x\r\n"[..]));
        assert_eq!(unstuff_line(b"x.\r\n"), Some(&b"x.\r\n"[..]));
        assert_eq!(dot_unstuff(b"a\r\nb\r\n"), None, "no terminator");
    }
}
