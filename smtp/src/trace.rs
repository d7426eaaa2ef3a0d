//! Trace information added to every message: the `Return-Path` and `Received` header
//! fields (RFC 5321 4.4) and the queue id that names the message in logs and replies.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};

use crate::deliver::Envelope;

/// Messages named so far by this process; makes queue ids unique within it.
static QUEUE_SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// A queue id: the receipt time in microseconds and a per-process sequence number, in
/// hex. Unique per process and practically unique across restarts; the cluster-wide
/// message id is the node's business.
pub(crate) fn new_queue_id(now: DateTime<Utc>) -> String {
    let sequence = QUEUE_SEQUENCE.fetch_add(1, Ordering::Relaxed);
    format!("{:X}{:04X}", now.timestamp_micros(), sequence & 0xFFFF)
}

/// What the trace fields say about the session besides the envelope.
pub(crate) struct TraceInfo<'a> {
    /// This server's name.
    pub(crate) hostname: &'a str,
    /// EHLO (ESMTP) rather than HELO (SMTP).
    pub(crate) extended: bool,
    /// The TLS in use (protocol and cipher), if the session switched to TLS.
    pub(crate) tls: Option<&'a str>,
    /// The queue id of the message.
    pub(crate) queue_id: &'a str,
    /// Time of receipt.
    pub(crate) received_at: DateTime<Utc>,
}

/// `Return-Path` and `Received` header fields, CRLF-terminated, to put before the
/// message as received.
pub(crate) fn trace_fields(envelope: &Envelope, info: &TraceInfo<'_>) -> Vec<u8> {
    let mut fields = String::with_capacity(256);
    // RFC 3848: ESMTPS for ESMTP over TLS.
    let protocol = match (info.extended, info.tls.is_some()) {
        (true, true) => "ESMTPS",
        (true, false) => "ESMTP",
        (false, _) => "SMTP",
    };
    // Writing into a String cannot fail.
    let _ = write!(
        fields,
        "Return-Path: <{}>\r\nReceived: from {}",
        HeaderText(&envelope.mail_from),
        HeaderText(&envelope.helo),
    );
    if let Some(peer) = envelope.peer {
        let _ = write!(fields, " ({})", AddressLiteral(peer));
    }
    if let Some(tls) = info.tls {
        let _ = write!(fields, "\r\n\t(using {})", HeaderText(tls));
    }
    let _ = write!(
        fields,
        "\r\n\tby {} (Porcupine) with {protocol} id {}",
        HeaderText(info.hostname),
        info.queue_id
    );
    if let Some(first) = envelope.rcpt_to.first() {
        let _ = write!(fields, "\r\n\tfor <{}>", HeaderText(first));
    }
    let _ = write!(fields, "; {}\r\n", info.received_at.to_rfc2822());
    fields.into_bytes()
}

/// Text from the client shown in a header field: anything but printable ASCII becomes
/// `?`, so the field stays one well-formed line whatever the client sent.
struct HeaderText<'a>(&'a str);

impl std::fmt::Display for HeaderText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for ch in self.0.chars() {
            f.write_char(if ch.is_ascii_graphic() || ch == ' ' {
                ch
            } else {
                '?'
            })?;
        }
        Ok(())
    }
}

/// A peer address as an RFC 5321 address literal: `[192.0.2.1]` or `[IPv6:2001:db8::1]`.
struct AddressLiteral(SocketAddr);

impl std::fmt::Display for AddressLiteral {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            SocketAddr::V4(v4) => write!(f, "[{}]", v4.ip()),
            SocketAddr::V6(v6) => write!(f, "[IPv6:{}]", v6.ip()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn envelope(peer: Option<SocketAddr>) -> Envelope {
        Envelope {
            helo: "client.test".to_string(),
            mail_from: "sender@remote.test".to_string(),
            rcpt_to: vec!["alice@example.test".into(), "bob@example.test".into()],
            peer,
        }
    }

    fn info(extended: bool) -> TraceInfo<'static> {
        TraceInfo {
            hostname: "mx.example.test",
            extended,
            tls: None,
            queue_id: "ABC123",
            received_at: Utc.with_ymd_and_hms(2024, 2, 29, 13, 5, 9).unwrap(),
        }
    }

    #[test]
    fn fields_for_esmtp_over_ipv4() {
        let fields = trace_fields(
            &envelope(Some("192.0.2.7:2525".parse().unwrap())),
            &info(true),
        );
        assert_eq!(
            String::from_utf8(fields).unwrap(),
            "Return-Path: <sender@remote.test>\r\n\
             Received: from client.test ([192.0.2.7])\r\n\
             \tby mx.example.test (Porcupine) with ESMTP id ABC123\r\n\
             \tfor <alice@example.test>; Thu, 29 Feb 2024 13:05:09 +0000\r\n"
        );
    }

    #[test]
    fn fields_for_smtp_ipv6_null_sender() {
        let mut env = envelope(Some("[2001:db8::1]:25".parse().unwrap()));
        env.mail_from = String::new();
        let text = String::from_utf8(trace_fields(&env, &info(false))).unwrap();
        assert!(
            text.starts_with(
                "Return-Path: <>\r\nReceived: from client.test ([IPv6:2001:db8::1])\r\n"
            )
        );
        assert!(text.contains(" with SMTP id ABC123\r\n"));
    }

    #[test]
    fn client_text_cannot_break_the_header() {
        let mut env = envelope(None);
        env.helo = "evil\r\nX-Injected: yes".to_string();
        let text = String::from_utf8(trace_fields(&env, &info(true))).unwrap();
        assert!(text.contains("Received: from evil??X-Injected: yes\r\n\tby "));
        assert_eq!(text.matches("\r\n").count(), 4);
    }

    #[test]
    fn queue_ids_differ() {
        let now = Utc::now();
        assert_ne!(new_queue_id(now), new_queue_id(now));
    }
}
