"""Byte-exact round trips: bytes in over SMTP DATA come out of POP3 RETR unchanged,
behind exactly one prepended Return-Path and Received."""

import poplib
import random
import smtplib
import unittest

import harness
from harness import DOMAIN, HOST

USER = f"rt@{DOMAIN}"
PASSWORD = "round-trip-pw"
SENDER = "sender@elsewhere.test"


def headers(subject: str) -> bytes:
    mid = f"<{random.getrandbits(64):016x}@client.test>"
    return f"From: {SENDER}\r\nTo: {USER}\r\nSubject: {subject}\r\nMessage-ID: {mid}\r\n".encode()


class RoundTripTest(unittest.TestCase):
    cluster: harness.Cluster

    @classmethod
    def setUpClass(cls):
        cls.cluster = harness.Cluster(nodes=1).start()
        cls.addClassCleanup(cls.cluster.cleanup)
        cls.cluster.add_user(USER, PASSWORD)
        cls.smtp = cls.cluster.smtp_port()
        cls.pop = cls.cluster.pop_port()

    def roundtrip(self, msg: bytes, via_smtplib: bool = False) -> bytes:
        """Deliver msg, read it back (then delete it); assert the stored form; return it."""
        if via_smtplib:
            with smtplib.SMTP(HOST, self.smtp, timeout=120, local_hostname="client.test") as s:
                s.ehlo("client.test")
                refused = s.sendmail(SENDER, [USER], msg, mail_options=["BODY=8BITMIME"])
                self.assertEqual(refused, {})
        else:
            with harness.SmtpRaw(self.smtp, timeout=120) as s:
                self.assertIn(b"porcupine.localhost", b" ".join(s.greeting.lines))
                r = s.send_mail(SENDER, [USER], msg, eightbit=True)
                self.assertEqual(r.code, 250, r)
        p = harness.pop_session(self.pop, USER, PASSWORD)
        try:
            sizes = p.listing()
            self.assertEqual(len(sizes), 1, "mailbox should hold just this message")
            stored = p.retr(1)
            # LIST octets are the exact size of what RETR delivers (un-stuffed, CRLF).
            self.assertEqual(sizes[1], len(stored))
            p.ok("DELE 1")
            p.quit()
        finally:
            p.close()
        fields, rest = harness.split_trace(stored)
        names = [f.split(b":", 1)[0].lower() for f in fields]
        self.assertEqual(names.count(b"return-path"), 1, fields)
        self.assertEqual(names.count(b"received"), 1, fields)
        return_path = [f for f in fields if f.lower().startswith(b"return-path:")][0]
        self.assertEqual(return_path.split(b":", 1)[1].strip(), f"<{SENDER}>".encode())
        received = [f for f in fields if f.lower().startswith(b"received:")][0]
        self.assertIn(b"porcupine.localhost", received)
        if rest != msg:
            at = next((i for i, (a, b) in enumerate(zip(rest, msg)) if a != b), min(len(rest), len(msg)))
            self.fail(
                f"stored body differs from sent at byte {at}: sent {len(msg)} bytes, got {len(rest)}; "
                f"sent[{at}:+40]={msg[at:at + 40]!r} got[{at}:+40]={rest[at:at + 40]!r}"
            )
        return stored

    def test_dot_lines(self):
        msg = headers("dots") + (
            b"\r\n"
            b".starts with one dot\r\n"
            b"..starts with two dots\r\n"
            b"middle\r\n"
            b".\r\n"
            b"after a lone dot\r\n"
            b"...\r\n"
            b". space after dot\r\n"
            b"\r\n"
            b".\r\n"
        )
        self.roundtrip(msg)

    def test_dot_lines_via_smtplib(self):
        msg = headers("dots smtplib") + b"\r\n.one\r\n..two\r\n.\r\nend\r\n"
        self.roundtrip(msg, via_smtplib=True)

    def test_eight_bit_bytes(self):
        latin1 = "café, naïve, Straße\r\n".encode("latin-1")
        utf8 = "Grüße, 日本語, emoji \U0001f994\r\n".encode("utf-8")
        every_high_byte = bytes(range(0x80, 0x100)) + b"\r\n"
        msg = headers("eight bit") + b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + latin1 + utf8 + every_high_byte
        self.roundtrip(msg)

    def test_998_char_line(self):
        line = bytes(random.choice(b"abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(998))
        msg = headers("long line") + b"\r\n" + line + b"\r\n." + line[:997] + b"\r\nshort\r\n"
        self.assertEqual(len(line), 998)
        self.roundtrip(msg)

    def test_whitespace_and_empty_lines_kept(self):
        msg = headers("ws") + b"\r\n\r\n  leading spaces\r\ntrailing spaces   \r\n\ttab\r\n\r\n\r\n"
        self.roundtrip(msg)

    def test_null_sender_bounce(self):
        # MAIL FROM:<> (a bounce) is accepted and recorded as Return-Path: <>.
        msg = headers("bounce") + b"\r\nundeliverable\r\n"
        with harness.SmtpRaw(self.smtp) as s:
            r = s.send_mail("", [USER], msg)
            self.assertEqual(r.code, 250, r)
        p = harness.pop_session(self.pop, USER, PASSWORD)
        try:
            stored = p.retr(1)
            p.ok("DELE 1")
            p.quit()
        finally:
            p.close()
        fields, rest = harness.split_trace(stored)
        self.assertEqual(rest, msg)
        self.assertIn(b"Return-Path: <>\r\n", fields)

    def test_bdat_binary_exact(self):
        # BDAT is not dot-stuffed and carries bare dots and high bytes as they are.
        msg = headers("bdat exact") + b"\r\n.\r\n..\r\n\xff\xfe caf\xc3\xa9\r\n"
        with harness.SmtpRaw(self.smtp) as s:
            self.assertEqual(s.cmd("EHLO client.test").code, 250)
            self.assertEqual(s.cmd(f"MAIL FROM:<{SENDER}> BODY=8BITMIME").code, 250)
            self.assertEqual(s.cmd(f"RCPT TO:<{USER}>").code, 250)
            s.send(f"BDAT {len(msg)} LAST\r\n".encode() + msg)
            self.assertEqual(s.reply().code, 250)
        p = harness.pop_session(self.pop, USER, PASSWORD)
        try:
            sizes = p.listing()
            stored = p.retr(1)
            self.assertEqual(sizes[1], len(stored))
            p.ok("DELE 1")
            p.quit()
        finally:
            p.close()
        self.assertEqual(harness.split_trace(stored)[1], msg)

    def test_ten_mib_message_and_poplib(self):
        rng = random.Random(1999)
        alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        lines = []
        size = 0
        while size < 10 * 1024 * 1024:
            n = rng.randrange(0, 77)
            line = bytes(rng.choice(alphabet) for _ in range(n))
            if rng.random() < 0.02:
                line = b"." + line
            lines.append(line)
            size += len(line) + 2
        msg = headers("ten MiB") + b"\r\n" + b"\r\n".join(lines) + b"\r\n"
        self.assertGreaterEqual(len(msg), 10 * 1024 * 1024)
        # Deliver, then read once with poplib (its own un-stuffing) before the checked read.
        with harness.SmtpRaw(self.smtp, timeout=300) as s:
            r = s.send_mail(SENDER, [USER], msg)
            self.assertEqual(r.code, 250, r)
        c = poplib.POP3(HOST, self.pop, timeout=300)
        try:
            c.user(USER)
            c.pass_(PASSWORD)
            _, listing, _ = c.list()
            self.assertEqual(len(listing), 1)
            octets = int(listing[0].split()[1])
            _, got_lines, _ = c.retr(1)
            via_poplib = b"\r\n".join(got_lines) + b"\r\n"
            self.assertEqual(len(via_poplib), octets)
            self.assertEqual(harness.split_trace(via_poplib)[1], msg)
            c.quit()
        finally:
            c.close()
        # Same message through the raw client, with the full checks (and deleted after).
        p = harness.pop_session(self.pop, USER, PASSWORD)
        p.ok("DELE 1")
        p.quit()
        self.roundtrip(msg)


if __name__ == "__main__":
    unittest.main()
