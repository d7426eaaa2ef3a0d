"""Misbehaving clients must not hurt the server: after each, normal delivery still works."""

import os
import random
import re
import socket
import threading
import time
import unittest

import harness
from harness import DOMAIN, HOST

USER = f"robust@{DOMAIN}"
PASSWORD = "robust-pw"


class RobustnessTest(unittest.TestCase):
    cluster: harness.Cluster

    @classmethod
    def setUpClass(cls):
        harness.require_tool("swaks")
        cls.cluster = harness.Cluster(nodes=1).start()
        cls.addClassCleanup(cls.cluster.cleanup)
        cls.cluster.add_user(USER, PASSWORD)
        cls.smtp = cls.cluster.smtp_port()
        cls.pop = cls.cluster.pop_port()

    def count(self) -> int:
        p = harness.pop_session(self.pop, USER, PASSWORD)
        try:
            n = len(p.listing())
            p.quit()
            return n
        finally:
            p.close()

    def wait_smtp_sessions_closed(self, timeout_s: float = 10) -> None:
        """Wait until the node's `porcupine_sessions_open{protocol="smtp"}` gauge is 0."""
        deadline = time.monotonic() + timeout_s
        while True:
            status, text = harness.http_request(self.cluster.admin_url() + "/metrics")
            self.assertEqual(status, 200, text)
            m = re.search(r'^porcupine_sessions_open\{protocol="smtp"\} (\S+)$', text, re.M)
            if m and float(m.group(1)) == 0:
                return
            self.assertLess(time.monotonic(), deadline, f"SMTP sessions still open: {m and m.group(0)}")
            time.sleep(0.05)

    def assert_still_serving(self, subject: str) -> None:
        """A normal delivery by swaks succeeds and lands."""
        before = self.count()
        cp = harness.run_swaks(self.smtp, USER, "--header", f"Subject: {subject}", "--body", "still alive")
        self.assertEqual(cp.returncode, 0, cp.stdout + cp.stderr)
        self.assertRegex(cp.stdout, r"<-\s+250 ")
        self.assertEqual(self.count(), before + 1)

    def test_garbage_bytes(self):
        rng = random.Random(7)
        for _ in range(5):
            s = socket.create_connection((HOST, self.smtp), timeout=10)
            s.recv(4096)  # greeting
            junk = bytes(rng.randrange(256) for _ in range(4096))
            s.sendall(junk + b"\r\n" + junk[:100] + b"\0\0\0\xff\xfe\r\n")
            time.sleep(0.05)
            s.close()
        # Garbage on the POP3 port too.
        s = socket.create_connection((HOST, self.pop), timeout=10)
        s.recv(4096)
        s.sendall(os.urandom(2048) + b"\r\n")
        s.close()
        self.assert_still_serving("after garbage")

    def test_garbage_gets_error_replies_not_silence(self):
        with harness.SmtpRaw(self.smtp, timeout=10) as s:
            s.send(b"\x00\x01\x02\xff\xfe binary junk\r\n")
            r = s.reply()
            self.assertEqual(r.code, 500, r)
            # The session is still usable.
            self.assertEqual(s.cmd("NOOP").code, 250)

    def test_overlong_command_500(self):
        with harness.SmtpRaw(self.smtp, timeout=10) as s:
            r = s.cmd(b"MAIL FROM:<" + b"a" * 600 + b"@elsewhere.test>")
            self.assertEqual(r.code, 500, r)
            r = s.cmd("NOOP")
            self.assertEqual(r.code, 250, r)
        self.assert_still_serving("after long command")

    def test_overlong_line_without_newline(self):
        # 10 kB and no line end: the server must not buffer it forever waiting for CRLF;
        # it answers 500 at once, skips the rest of that line, and the session goes on.
        with harness.SmtpRaw(self.smtp, timeout=10) as s:
            s.send(b"X" * 10_000)
            r = s.reply()
            self.assertEqual(r.code, 500, r)
            s.send(b"Y" * 5_000 + b"\r\n")
            self.assertEqual(s.cmd("NOOP").code, 250)
        # POP3 too: a 10 kB line gets one -ERR, then the session still answers.
        with harness.PopRaw(self.pop, timeout=10) as p:
            p.sock.sendall(b"X" * 10_000)
            r = p.cmd("")
            self.assertTrue(r.startswith(b"-ERR"), r)
            p.login(USER, PASSWORD)
            self.assertTrue(p.cmd("NOOP").startswith(b"+OK"))
            p.quit()
        self.assert_still_serving("after 10 kB line")

    def test_disconnect_mid_data_delivers_nothing(self):
        before = self.count()
        for cut in (0, 10, 200):
            s = harness.SmtpRaw(self.smtp, timeout=10)
            self.assertEqual(s.cmd("EHLO client.test").code, 250)
            self.assertEqual(s.cmd("MAIL FROM:<x@elsewhere.test>").code, 250)
            self.assertEqual(s.cmd(f"RCPT TO:<{USER}>").code, 250)
            self.assertEqual(s.cmd("DATA").code, 354)
            s.send(harness.make_message("cut", body="partial body\r\n" * 50)[:cut])
            s.close()
        # Also a client that vanishes right after the envelope.
        s = harness.SmtpRaw(self.smtp, timeout=10)
        s.cmd("HELO client.test")
        s.cmd("MAIL FROM:<x@elsewhere.test>")
        s.close()
        # Negative check only once the server has ended every one of those sessions.
        self.wait_smtp_sessions_closed()
        self.assertEqual(self.count(), before, "a cut-off DATA must not be delivered")
        self.assert_still_serving("after disconnects")

    def test_slow_client_does_not_block_others(self):
        before = self.count()
        msg = harness.make_message("slow one", body="typed slowly\r\n")
        done = threading.Event()
        result = {}

        def slow():
            try:
                with harness.SmtpRaw(self.smtp, timeout=60) as s:
                    script = (
                        f"EHLO slow.test\r\nMAIL FROM:<slow@elsewhere.test>\r\nRCPT TO:<{USER}>\r\nDATA\r\n".encode()
                    )
                    replies = []
                    for line in script.split(b"\r\n")[:-1]:
                        for b in line + b"\r\n":
                            s.send(bytes([b]))
                            time.sleep(0.03)
                        replies.append(s.reply().code)
                    data = harness.dot_stuff(msg) + b".\r\n"
                    for k in range(0, len(data), 8):
                        s.send(data[k:k + 8])
                        time.sleep(0.05)
                    replies.append(s.reply().code)
                    result["codes"] = replies
            except Exception as e:  # reported by the main thread
                result["error"] = repr(e)
            finally:
                done.set()

        t = threading.Thread(target=slow, daemon=True)
        t.start()
        time.sleep(0.3)
        self.assertFalse(done.is_set(), "the slow client was not slow")
        # The promise is ordering, not speed: the other delivery lands while the slow
        # client is still typing (its script takes several seconds).
        self.assert_still_serving("while a slow client dribbles")
        self.assertFalse(done.is_set(), "the other delivery only ran after the slow client finished")
        t.join(60)
        self.assertNotIn("error", result, result.get("error"))
        self.assertEqual(result["codes"], [250, 250, 250, 354, 250])
        self.assertEqual(self.count(), before + 2)

    def test_parallel_deliveries_and_reads(self):
        # 8 clients deliver 20 messages each to one mailbox while another reads it:
        # every message lands once, byte-exact, with its own UIDL.
        addr, pw = f"busy@{DOMAIN}", "busy-pw"
        self.cluster.add_user(addr, pw)
        sent = {}
        errors = []
        lock = threading.Lock()

        def client(k: int) -> None:
            try:
                with harness.SmtpRaw(self.smtp, timeout=60) as s:
                    s.cmd("EHLO par.test")
                    for n in range(20):
                        mid = f"<par-{k}-{n}@client.test>"
                        msg = harness.make_message(f"parallel {k}/{n}", body=f"{k} {n}\r\n" * (n + 1), msgid=mid)
                        r = s.send_mail("p@elsewhere.test", [addr], msg, ehlo=False)
                        with lock:
                            if r.code == 250:
                                sent[mid] = msg
                            else:
                                errors.append(repr(r))
            except Exception as e:
                with lock:
                    errors.append(repr(e))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        reads = 0
        seen_before = set()
        while any(t.is_alive() for t in threads):
            # One reader: a refusal other than a lock still being released is a failure.
            p = harness.pop_session(self.pop, addr, pw, timeout_s=5)
            uids = set(p.uidls().values())
            p.quit()
            reads += 1
            # Mail is only added while the senders run: a listing never loses a message.
            self.assertLessEqual(seen_before, uids, "a message vanished from a later listing")
            seen_before = uids
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        self.assertEqual(len(sent), 160)
        got = harness.fetch_all(self.pop, addr, pw)
        bodies = {harness.header_value(m, "Message-ID"): harness.split_trace(m)[1] for _, _, m in got}
        self.assertEqual(len(got), 160)
        self.assertEqual(bodies, sent)
        self.assertEqual(len({u for u, _, _ in got}), 160)
        self.assertGreater(reads, 0)

    def test_many_idle_connections_do_not_block(self):
        socks = []
        try:
            for _ in range(50):
                s = socket.create_connection((HOST, self.smtp), timeout=10)
                socks.append(s)
            for _ in range(20):
                s = socket.create_connection((HOST, self.pop), timeout=10)
                socks.append(s)
            self.assert_still_serving("with 70 idle connections open")
        finally:
            for s in socks:
                s.close()


if __name__ == "__main__":
    unittest.main()
