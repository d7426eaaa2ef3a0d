"""POP3 out, driven by curl and Python's poplib against one `porcupine up` node."""

import poplib
import subprocess
import time
import unittest

import harness
from harness import DOMAIN, HOST


class PopTest(unittest.TestCase):
    cluster: harness.Cluster
    _serial = 0

    @classmethod
    def setUpClass(cls):
        harness.require_tool("curl")
        cls.cluster = harness.Cluster(nodes=1).start()
        cls.addClassCleanup(cls.cluster.cleanup)
        cls.smtp = cls.cluster.smtp_port()
        cls.pop = cls.cluster.pop_port()

    def fresh_user(self, messages: int) -> tuple[str, str, list[bytes]]:
        """A new account with `messages` delivered messages; returns (addr, pw, bodies sent)."""
        PopTest._serial += 1
        addr = f"pop{PopTest._serial}-{self._testMethodName[5:20]}@{DOMAIN}".replace("_", "-")
        pw = f"pw-{PopTest._serial}"
        self.cluster.add_user(addr, pw)
        sent = []
        for k in range(messages):
            msg = harness.make_message(f"{addr} #{k}", body=f"body of message {k}\r\nsecond line\r\n")
            r = harness.deliver(self.smtp, addr, msg)
            self.assertEqual(r.code, 250, r)
            sent.append(msg)
        return addr, pw, sent

    def poplib(self, user: str, pw: str) -> poplib.POP3:
        c = poplib.POP3(HOST, self.pop, timeout=30)
        self.addCleanup(c.close)
        c.user(user)
        c.pass_(pw)
        return c

    def test_curl_list_and_retrieve(self):
        addr, pw, sent = self.fresh_user(2)
        url = f"pop3://{HOST}:{self.pop}/"
        cp = subprocess.run(["curl", "--noproxy", "*", "-sS", "--max-time", "30", url, "--user", f"{addr}:{pw}"], capture_output=True, timeout=60)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        lines = [l.split() for l in cp.stdout.decode().splitlines() if l.strip()]
        self.assertEqual([l[0] for l in lines], ["1", "2"], cp.stdout)
        with harness.pop_session(self.pop, addr, pw) as p:
            sizes = p.listing()
            stored = [p.retr(1), p.retr(2)]
            p.quit()
        self.assertEqual({int(n): int(s) for n, s in lines}, sizes)
        for n in (1, 2):
            cp = subprocess.run(["curl", "--noproxy", "*", "-sS", "--max-time", "30", f"{url}{n}", "--user", f"{addr}:{pw}"], capture_output=True, timeout=60)
            self.assertEqual(cp.returncode, 0, cp.stderr)
            self.assertEqual(cp.stdout, stored[n - 1])
        # The curl-retrieved bodies are the messages that were sent (order of arrival).
        self.assertEqual(sorted(harness.split_trace(m)[1] for m in stored), sorted(sent))
        # curl -X DELE removes message 1 (curl QUITs, so the delete is applied). curl
        # expects a multi-line answer to a custom command unless -I says "no body"; without
        # -I (as the README's example has it) curl waits forever for a terminator.
        cp = subprocess.run(
            ["curl", "--noproxy", "*", "-sS", "--max-time", "20", f"{url}1", "--user", f"{addr}:{pw}", "-X", "DELE", "-I"],
            capture_output=True,
            timeout=60,
        )
        self.assertEqual(cp.returncode, 0, cp.stderr)
        left = harness.fetch_all(self.pop, addr, pw)
        self.assertEqual([m for _, _, m in left], [stored[1]])

    def test_poplib_full_session(self):
        addr, pw, sent = self.fresh_user(3)
        c = self.poplib(addr, pw)
        count, octets = c.stat()
        self.assertEqual(count, 3)
        resp, listing, _ = c.list()
        self.assertTrue(resp.startswith(b"+OK"))
        sizes = {int(n): int(s) for n, s in (l.split() for l in listing)}
        self.assertEqual(sorted(sizes), [1, 2, 3])
        self.assertEqual(sum(sizes.values()), octets)
        # LIST n for one message agrees with the full listing.
        self.assertEqual(c.list(2).split()[1:], [b"2", str(sizes[2]).encode()])
        _, uidl_lines, _ = c.uidl()
        uids = {int(n): u for n, u in (l.split() for l in uidl_lines)}
        self.assertEqual(len(set(uids.values())), 3)
        self.assertEqual(c.uidl(3).split()[1:], [b"3", uids[3]])
        bodies = {}
        for n in (1, 2, 3):
            _, lines, size = c.retr(n)
            raw = b"\r\n".join(lines) + b"\r\n"
            self.assertEqual(len(raw), sizes[n])
            bodies[n] = raw
        self.assertEqual(sorted(harness.split_trace(b)[1] for b in bodies.values()), sorted(sent))
        # TOP n 0: exactly the header block, then the empty line; TOP n 1: plus one body line.
        head = bodies[1].split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        _, top0, _ = c.top(1, 0)
        self.assertEqual(top0, head + [b""])
        _, top1, _ = c.top(1, 1)
        self.assertEqual(top1, head + [b"", bodies[1].split(b"\r\n\r\n", 1)[1].split(b"\r\n")[0]])
        self.assertTrue(c.dele(2).startswith(b"+OK"))
        # A deleted message is gone for the rest of the session.
        with self.assertRaises(poplib.error_proto):
            c.retr(2)
        self.assertEqual(c.stat()[0], 2)
        self.assertTrue(c.quit().startswith(b"+OK"))
        left = harness.fetch_all(self.pop, addr, pw)
        self.assertEqual(sorted(u for u, _, _ in left), sorted(uids[n].decode() for n in (1, 3)))

    def test_wrong_password_auth_error_after_delay(self):
        addr, pw, _ = self.fresh_user(0)
        c = poplib.POP3(HOST, self.pop, timeout=30)
        self.addCleanup(c.close)
        c.user(addr)
        t0 = time.monotonic()
        with self.assertRaises(poplib.error_proto) as e:
            c.pass_("not-the-password")
        elapsed = time.monotonic() - t0
        self.assertTrue(e.exception.args[0].startswith(b"-ERR [AUTH]"), e.exception.args)
        self.assertGreaterEqual(elapsed, 0.9, "failed login answered without the documented delay")
        # An unknown user gets the same answer (no account probing).
        c2 = poplib.POP3(HOST, self.pop, timeout=30)
        self.addCleanup(c2.close)
        c2.user(f"nobody-here@{DOMAIN}")
        with self.assertRaises(poplib.error_proto) as e2:
            c2.pass_("whatever")
        self.assertTrue(e2.exception.args[0].startswith(b"-ERR [AUTH]"), e2.exception.args)

    def test_auth_plain_and_capa(self):
        addr, pw, _ = self.fresh_user(1)
        c = poplib.POP3(HOST, self.pop, timeout=30)
        self.addCleanup(c.close)
        caps = c.capa()
        for cap in ("USER", "UIDL", "TOP", "RESP-CODES", "SASL"):
            self.assertIn(cap, caps)
        self.assertIn("PLAIN", caps["SASL"])
        with harness.PopRaw(self.pop) as p:
            self.assertTrue(p.auth_plain(addr, "wrong").startswith(b"-ERR [AUTH]"))
        with harness.PopRaw(self.pop) as p:
            r = p.auth_plain(addr, pw)
            self.assertTrue(r.startswith(b"+OK"), r)
            self.assertEqual(len(p.listing()), 1)
            p.quit()

    def test_second_session_in_use(self):
        addr, pw, _ = self.fresh_user(1)
        first = self.poplib(addr, pw)
        self.assertEqual(first.stat()[0], 1)
        second = poplib.POP3(HOST, self.pop, timeout=30)
        self.addCleanup(second.close)
        second.user(addr)
        with self.assertRaises(poplib.error_proto) as e:
            second.pass_(pw)
        self.assertTrue(e.exception.args[0].startswith(b"-ERR [IN-USE]"), e.exception.args)
        first.quit()
        # Once the first session ends the mailbox can be opened again.
        p = harness.pop_session(self.pop, addr, pw)
        self.assertEqual(len(p.listing()), 1)
        p.quit()

    def test_deletes_only_at_quit(self):
        addr, pw, _ = self.fresh_user(3)
        before = harness.fetch_all(self.pop, addr, pw)
        self.assertEqual(len(before), 3)
        p = harness.pop_session(self.pop, addr, pw)
        self.assertTrue(p.ok("DELE 1").startswith(b"+OK"))
        self.assertTrue(p.ok("DELE 2").startswith(b"+OK"))
        p.close()  # drop the socket without QUIT
        after_drop = harness.fetch_all(self.pop, addr, pw)
        self.assertEqual([u for u, _, _ in after_drop], [u for u, _, _ in before])
        # RSET undoes the marks too.
        p = harness.pop_session(self.pop, addr, pw)
        p.ok("DELE 1")
        p.ok("RSET")
        p.quit()
        self.assertEqual(len(harness.fetch_all(self.pop, addr, pw)), 3)
        # DELE + QUIT really deletes.
        p = harness.pop_session(self.pop, addr, pw)
        p.ok("DELE 2")
        self.assertTrue(p.quit().startswith(b"+OK"))
        after_quit = harness.fetch_all(self.pop, addr, pw)
        self.assertEqual([u for u, _, _ in after_quit], [before[0][0], before[2][0]])

    def test_mail_arriving_during_a_session_is_not_touched(self):
        # RFC 1939: the session works on the maildrop as it was at login; mail that
        # arrives meanwhile is neither shown nor deleted by that session's QUIT.
        addr, pw, _ = self.fresh_user(2)
        p = harness.pop_session(self.pop, addr, pw)
        self.assertEqual(sorted(p.listing()), [1, 2])
        late = harness.make_message("arrived during the session")
        r = harness.deliver(self.smtp, addr, late)
        self.assertEqual(r.code, 250, r)
        self.assertEqual(sorted(p.listing()), [1, 2])
        self.assertTrue(p.cmd("RETR 3").startswith(b"-ERR"))
        p.ok("DELE 1")
        p.ok("DELE 2")
        self.assertTrue(p.quit().startswith(b"+OK"))
        left = harness.fetch_all(self.pop, addr, pw)
        self.assertEqual([harness.split_trace(m)[1] for _, _, m in left], [late])

    def test_errors_in_transaction_state(self):
        addr, pw, _ = self.fresh_user(1)
        p = harness.pop_session(self.pop, addr, pw)
        try:
            for bad in ("RETR 0", "RETR 2", "RETR x", "TOP 1", "TOP 1 -1", "LIST 9", "DELE 9", "FROB"):
                self.assertTrue(p.cmd(bad).startswith(b"-ERR"), bad)
            p.ok("DELE 1")
            self.assertTrue(p.cmd("DELE 1").startswith(b"-ERR"))
            self.assertTrue(p.cmd("LIST 1").startswith(b"-ERR"))
            self.assertTrue(p.cmd("UIDL 1").startswith(b"-ERR"))
            self.assertEqual(p.ok("STAT").split()[1], b"0")
            p.ok("NOOP")
            p.ok("RSET")
            self.assertEqual(p.ok("STAT").split()[1], b"1")
            p.quit()
        finally:
            p.close()
        # Commands of the TRANSACTION state are refused before login.
        with harness.PopRaw(self.pop) as q:
            for cmd in ("STAT", "LIST", "RETR 1", "DELE 1"):
                self.assertTrue(q.cmd(cmd).startswith(b"-ERR"), cmd)
            self.assertTrue(q.cmd("PASS before-user").startswith(b"-ERR"))

    def test_uidl_stable_and_unique(self):
        addr, pw, _ = self.fresh_user(4)
        a = harness.pop_session(self.pop, addr, pw)
        first = a.uidls()
        a.quit()
        self.assertEqual(len(first), 4)
        self.assertEqual(len(set(first.values())), 4)
        # RFC 1939: 1 to 70 characters in 0x21..0x7E.
        for u in first.values():
            self.assertTrue(1 <= len(u) <= 70 and all(0x21 <= ord(ch) <= 0x7E for ch in u), u)
        # More mail arrives; old ids stay, the new one is new.
        r = harness.deliver(self.smtp, addr, harness.make_message("fifth"))
        self.assertEqual(r.code, 250)
        b = harness.pop_session(self.pop, addr, pw)
        second = b.uidls()
        b.quit()
        self.assertEqual(len(second), 5)
        self.assertTrue(set(first.values()) < set(second.values()), (first, second))
        new_uid = (set(second.values()) - set(first.values())).pop()
        # The same uid names the same message in both sessions (compare the Message-ID).
        ids_first = self.message_ids(addr, pw)
        self.assertEqual(sorted(ids_first), sorted(second.values()))
        # Deleting one keeps the others' ids.
        c = harness.pop_session(self.pop, addr, pw)
        deleted_uid = c.uidls()[2]
        c.ok("DELE 2")
        c.quit()
        d = harness.pop_session(self.pop, addr, pw)
        third = d.uidls()
        d.quit()
        self.assertEqual(len(third), 4)
        self.assertTrue(set(third.values()) < set(second.values()))
        self.assertIn(new_uid, third.values())
        self.assertNotIn(deleted_uid, third.values())
        ids_third = self.message_ids(addr, pw)
        for uid, mid in ids_third.items():
            self.assertEqual(ids_first[uid], mid, "a uid now names another message")

    def message_ids(self, addr: str, pw: str) -> dict[str, str]:
        """uid -> Message-ID header, read with TOP n 0."""
        p = harness.pop_session(self.pop, addr, pw)
        try:
            out = {}
            for n, uid in p.uidls().items():
                out[uid] = harness.header_value(p.multi(f"TOP {n} 0"), "Message-ID")
            p.quit()
            return out
        finally:
            p.close()


if __name__ == "__main__":
    unittest.main()
