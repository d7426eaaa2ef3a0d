"""SMTP in, driven by swaks and Python's smtplib against one `porcupine up` node."""

import smtplib
import unittest

import harness
from harness import DOMAIN, HOST

USER = f"alice@{DOMAIN}"
PASSWORD = "s3cret-alice"
SIZE_MAX = 26214400  # README: smtp_message_size_max default


class SmtpTest(unittest.TestCase):
    cluster: harness.Cluster

    @classmethod
    def setUpClass(cls):
        harness.require_tool("swaks")
        cls.cluster = harness.Cluster(nodes=1).start()
        cls.addClassCleanup(cls.cluster.cleanup)
        cls.cluster.add_user(USER, PASSWORD)
        cls.port = cls.cluster.smtp_port()

    def smtp(self) -> smtplib.SMTP:
        s = smtplib.SMTP(HOST, self.port, timeout=30, local_hostname="client.test")
        self.addCleanup(s.close)
        code, _ = s.ehlo("client.test")
        self.assertEqual(code, 250)
        return s

    def mailbox_count(self) -> int:
        p = harness.pop_session(self.cluster.pop_port(), USER, PASSWORD)
        try:
            n = len(p.listing())
            p.quit()
            return n
        finally:
            p.close()

    def test_swaks_delivers(self):
        before = self.mailbox_count()
        subject = "swaks-delivery-7f3a"
        cp = harness.run_swaks(self.port, USER, "--header", f"Subject: {subject}", "--body", "first message")
        self.assertEqual(cp.returncode, 0, cp.stdout + cp.stderr)
        self.assertRegex(cp.stdout, r"<-\s+250 ", cp.stdout)
        msgs = harness.fetch_all(self.cluster.pop_port(), USER, PASSWORD)
        self.assertEqual(len(msgs), before + 1)
        self.assertEqual([harness.header_value(m, "Subject") for _, _, m in msgs].count(subject), 1)
        body = [m for _, _, m in msgs if harness.header_value(m, "Subject") == subject][0]
        self.assertIn(b"first message", body)

    def test_swaks_unknown_user_550_511(self):
        cp = harness.run_swaks(self.port, f"nobody@{DOMAIN}")
        self.assertNotEqual(cp.returncode, 0, cp.stdout)
        self.assertRegex(cp.stdout, r"<\*\*\s+550[ -]5\.1\.1", cp.stdout)

    def test_swaks_non_local_domain_550_571(self):
        cp = harness.run_swaks(self.port, "bob@not-ours.test")
        self.assertNotEqual(cp.returncode, 0, cp.stdout)
        self.assertRegex(cp.stdout, r"<\*\*\s+550[ -]5\.7\.1", cp.stdout)

    def test_ehlo_advertises_extensions(self):
        s = self.smtp()
        for ext in ("pipelining", "8bitmime", "enhancedstatuscodes", "chunking"):
            self.assertTrue(s.has_extn(ext), f"{ext} missing from EHLO: {s.esmtp_features}")
        self.assertEqual(s.esmtp_features.get("size"), str(SIZE_MAX))

    def test_declared_size_over_limit_552(self):
        s = self.smtp()
        code, msg = s.docmd("MAIL", f"FROM:<carol@elsewhere.test> SIZE={SIZE_MAX + 1}")
        self.assertEqual(code, 552, msg)
        # At the limit exactly is fine.
        code, msg = s.docmd("MAIL", f"FROM:<carol@elsewhere.test> SIZE={SIZE_MAX}")
        self.assertEqual(code, 250, msg)

    def test_actual_size_over_limit_552(self):
        # No SIZE= declared: the server must still refuse once the data passes the limit,
        # and must not deliver anything.
        before = self.mailbox_count()
        line = b"x" * 998 + b"\r\n"
        body = b"Subject: too big\r\n\r\n" + line * (SIZE_MAX // len(line) + 2)
        self.assertGreater(len(body), SIZE_MAX)
        with harness.SmtpRaw(self.port, timeout=120) as s:
            r = s.send_mail("carol@elsewhere.test", [USER], body)
        self.assertEqual(r.code, 552, r)
        self.assertEqual(self.mailbox_count(), before)

    def test_rcpt_before_mail_503(self):
        s = self.smtp()
        code, msg = s.docmd("RCPT", f"TO:<{USER}>")
        self.assertEqual(code, 503, msg)
        code, msg = s.docmd("DATA")
        self.assertEqual(code, 503, msg)

    def test_unknown_command_500(self):
        s = self.smtp()
        code, msg = s.docmd("FROBNICATE", "now")
        self.assertEqual(code, 500, msg)
        # The session goes on.
        self.assertEqual(s.noop()[0], 250)

    def test_bad_arguments_501(self):
        s = self.smtp()
        code, msg = s.docmd("MAIL", "FROM:<unterminated@elsewhere.test")
        self.assertEqual(code, 501, msg)
        code, msg = s.docmd("EHLO")
        self.assertEqual(code, 501, msg)
        code, msg = s.docmd("MAIL", "FROM:<carol@elsewhere.test>")
        self.assertEqual(code, 250, msg)
        code, msg = s.docmd("RCPT", "TO:<>")
        self.assertEqual(code, 501, msg)

    def test_domain_is_case_insensitive(self):
        # RFC 5321 2.4: domain names are case-insensitive.
        before = self.mailbox_count()
        r = harness.deliver(self.port, f"alice@{DOMAIN.upper()}", harness.make_message("upper-case domain"))
        self.assertEqual(r.code, 250, r)
        self.assertEqual(self.mailbox_count(), before + 1)

    def test_101st_recipient_452(self):
        users = [(f"r{i:03d}@{DOMAIN}", "pw") for i in range(101)]
        self.cluster.add_users(users)
        s = self.smtp()
        code, msg = s.docmd("MAIL", "FROM:<carol@elsewhere.test>")
        self.assertEqual(code, 250, msg)
        for i, (addr, _) in enumerate(users[:100]):
            code, msg = s.docmd("RCPT", f"TO:<{addr}>")
            self.assertEqual(code, 250, f"recipient {i + 1}: {code} {msg!r}")
        code, msg = s.docmd("RCPT", f"TO:<{users[100][0]}>")
        self.assertEqual(code, 452, msg)
        self.assertEqual(s.rset()[0], 250)

    def test_vrfy_252(self):
        s = self.smtp()
        code, msg = s.verify(USER)
        self.assertEqual(code, 252, msg)
        # Must not reveal whether an account exists: same answer for a stranger.
        code2, _ = s.verify(f"nobody@{DOMAIN}")
        self.assertEqual(code2, 252)

    def test_help_214(self):
        s = self.smtp()
        code, msg = s.docmd("HELP")
        self.assertEqual(code, 214, msg)

    def test_rset_and_noop_and_quit(self):
        s = self.smtp()
        self.assertEqual(s.docmd("MAIL", "FROM:<carol@elsewhere.test>")[0], 250)
        self.assertEqual(s.rset()[0], 250)
        # After RSET the transaction is gone: RCPT is out of sequence again.
        self.assertEqual(s.docmd("RCPT", f"TO:<{USER}>")[0], 503)
        self.assertEqual(s.noop()[0], 250)
        self.assertEqual(s.quit()[0], 221)

    def test_smtplib_sendmail_multiple_recipients(self):
        self.cluster.add_users([(f"bob@{DOMAIN}", "pw-bob")])
        before = self.mailbox_count()
        s = self.smtp()
        msg = harness.make_message("two-rcpts-91c2")
        refused = s.sendmail("carol@elsewhere.test", [USER, f"bob@{DOMAIN}", f"ghost@{DOMAIN}"], msg)
        # smtplib reports per-recipient refusals; the unknown one must be 550 5.1.1.
        self.assertEqual(list(refused), [f"ghost@{DOMAIN}"])
        self.assertEqual(refused[f"ghost@{DOMAIN}"][0], 550)
        self.assertEqual(self.mailbox_count(), before + 1)
        bob = harness.fetch_all(self.cluster.pop_port(), f"bob@{DOMAIN}", "pw-bob")
        self.assertEqual(sum(1 for _, _, m in bob if harness.header_value(m, "Subject") == "two-rcpts-91c2"), 1)

    def test_pipelined_transaction(self):
        before = self.mailbox_count()
        with harness.SmtpRaw(self.port) as s:
            self.assertEqual(s.cmd("EHLO client.test").code, 250)
            s.send(f"MAIL FROM:<carol@elsewhere.test>\r\nRCPT TO:<{USER}>\r\nRCPT TO:<nobody@{DOMAIN}>\r\nDATA\r\n".encode())
            codes = [s.reply().code for _ in range(4)]
            self.assertEqual(codes, [250, 250, 550, 354])
            s.send(harness.dot_stuff(harness.make_message("pipelined")) + b".\r\nQUIT\r\n")
            self.assertEqual(s.reply().code, 250)
            self.assertEqual(s.reply().code, 221)
        self.assertEqual(self.mailbox_count(), before + 1)

    def test_bdat_chunking(self):
        before = self.mailbox_count()
        msg = harness.make_message("bdat-chunks", body="line one\r\n.line two\r\n")
        with harness.SmtpRaw(self.port) as s:
            self.assertEqual(s.cmd("EHLO client.test").code, 250)
            self.assertEqual(s.cmd("MAIL FROM:<carol@elsewhere.test>").code, 250)
            self.assertEqual(s.cmd(f"RCPT TO:<{USER}>").code, 250)
            half = len(msg) // 2
            s.send(f"BDAT {half}\r\n".encode() + msg[:half])
            self.assertEqual(s.reply().code, 250)
            s.send(f"BDAT {len(msg) - half} LAST\r\n".encode() + msg[half:])
            self.assertEqual(s.reply().code, 250)
        msgs = harness.fetch_all(self.cluster.pop_port(), USER, PASSWORD)
        self.assertEqual(len(msgs), before + 1)
        got = [m for _, _, m in msgs if harness.header_value(m, "Subject") == "bdat-chunks"]
        self.assertEqual(len(got), 1)
        # BDAT is not dot-stuffed: the ".line two" must come back as sent.
        self.assertEqual(harness.split_trace(got[0])[1], msg)


if __name__ == "__main__":
    unittest.main()
