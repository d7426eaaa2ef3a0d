"""A node whose data disk (a 40 MB tmpfs, its log on it too) fills up (issue 14):

* a message the store cannot write gets `452 4.3.1`, never `250`, and the SMTP
  session goes on (NOOP, another transaction) although the node's log cannot be
  written either;
* every acknowledged message stays byte-exact over POP3, and POP3 deletes work on
  the full disk;
* compaction frees the deleted space and the node takes mail again by itself;
* a node stopped on a full disk starts again and serves every acknowledged message.

Needs root (mount); the tmpfs is unmounted at the end.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import subprocess
import time
import unittest

import harness
from harness import DOMAIN, HOST, fetch_all, pop_session, split_trace
from serve_proc import ServeNode

PASSWORD = "pw-disk-full"
MESSAGE_BYTES = 200_000
NODE_TOML = """
disk_reserve_mb = 0
segment_size_mb = 1
compact_interval_secs = 1
compact_rate_mb_per_sec = 0
"""


def body_for(i: int) -> bytes:
    line = f"disk full message {i} ".encode() + bytes(range(65, 91)) * 3
    lines = [line + b" " + str(n).encode() for n in range(MESSAGE_BYTES // (len(line) + 6))]
    return (f"From: a@client.test\r\nSubject: full {i}\r\nMessage-ID: <full-{i}@client.test>\r\n\r\n".encode()
            + b"\r\n".join(lines) + b"\r\n")


def free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def stored(port: int, user: str) -> dict[str, bytes]:
    out = {}
    for _, _, raw in fetch_all(port, user, PASSWORD):
        _, rest = split_trace(raw)
        out[harness.header_value(rest, "Subject")] = rest
    return out


@unittest.skipUnless(os.geteuid() == 0 and shutil.which("mount"), "needs root to mount a small tmpfs")
class DiskFullTest(unittest.TestCase):
    def setUp(self):
        self.node = ServeNode(NODE_TOML)
        self.addCleanup(self.node.cleanup)
        self.data = os.path.join(self.node.dir, "data")
        os.makedirs(self.data)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", self.data], check=True)
        self.addCleanup(subprocess.run, ["umount", "-l", self.data], check=False)
        # The node's log shares the full disk, as in the probe that found the bug.
        self.node.log_path = os.path.join(self.data, "node.log")
        self.user = f"full@{DOMAIN}"

    def fill(self, s: smtplib.SMTP, first: int, sent: dict[str, bytes]) -> int:
        """Send messages on session `s` until one is refused; assert the refusal is
        452 4.3.1; returns the number of the refused one."""
        for i in range(first, first + 1000):
            body = body_for(i)
            try:
                s.sendmail("a@client.test", [self.user], body)
            except smtplib.SMTPDataError as e:
                self.assertEqual(e.smtp_code, 452, e)
                self.assertIn(b"4.3.1", e.smtp_error)
                return i
            sent[f"full {i}"] = body
        self.fail("the 40 MB disk never filled")

    def test_full_disk(self):
        node = self.node.start()
        node.add_user(self.user, PASSWORD)
        sent: dict[str, bytes] = {}
        with smtplib.SMTP(HOST, node.smtp_port, timeout=60) as s:
            refused = self.fill(s, 0, sent)
            self.assertGreater(len(sent), 20)
            # The session goes on: NOOP, and the next transaction is refused in protocol.
            self.assertEqual(s.noop()[0], 250)
            with self.assertRaises(smtplib.SMTPDataError) as e:
                s.sendmail("a@client.test", [self.user], body_for(refused + 1))
            self.assertEqual(e.exception.smtp_code, 452)
            self.assertEqual(s.noop()[0], 250)
        # A new session is greeted too.
        with smtplib.SMTP(HOST, node.smtp_port, timeout=30) as s:
            self.assertEqual(s.noop()[0], 250)
        self.assertIsNone(node.proc.poll(), "the node is still running")
        # Every acknowledged message, byte-exact; nothing refused was stored.
        self.assertEqual(stored(node.pop_port, self.user), sent)

        # POP3 deletes on the full disk: nine in ten.
        p = pop_session(node.pop_port, self.user, PASSWORD)
        doomed = set()
        for n in sorted(p.listing()):
            subject = harness.header_value(p.retr(n), "Subject")
            if int(subject.split()[1]) % 10 != 0:
                p.ok(f"DELE {n}")
                doomed.add(subject)
        self.assertTrue(p.quit().startswith(b"+OK"))
        p.close()
        for subject in doomed:
            del sent[subject]

        # Compaction gives the space back and the node takes mail again by itself.
        free_full = free_bytes(self.data)
        deadline = time.monotonic() + 60
        while free_bytes(self.data) < free_full + 10 * MESSAGE_BYTES and time.monotonic() < deadline:
            time.sleep(0.5)
        self.assertGreater(free_bytes(self.data), free_full + 10 * MESSAGE_BYTES, "compaction freed space")
        deadline = time.monotonic() + 30
        while True:
            try:
                with smtplib.SMTP(HOST, node.smtp_port, timeout=60) as s:
                    s.sendmail("a@client.test", [self.user], body_for(5000))
                sent["full 5000"] = body_for(5000)
                break
            except smtplib.SMTPDataError as e:
                self.assertEqual(e.smtp_code, 452)
                if time.monotonic() > deadline:
                    self.fail("the node never took mail again after space came back")
                time.sleep(0.5)
        self.assertEqual(stored(node.pop_port, self.user), sent)

        # Fill it again, stop it (kill -9, as a crash would), start it on the full disk.
        with smtplib.SMTP(HOST, node.smtp_port, timeout=60) as s:
            self.fill(s, 6000, sent)
        node.proc.kill()
        node.proc.wait(timeout=10)
        node.proc = None
        # The node released its reserve when it filled; something else takes that
        # too, to the last byte.
        fd = os.open(os.path.join(self.data, "ballast"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for chunk in (b"\1" * 65536, b"\1" * 512):
                try:
                    while os.write(fd, chunk) > 0:
                        pass
                except OSError:
                    pass
        finally:
            os.close(fd)
        self.assertLess(free_bytes(self.data), 65536)
        # Its log goes elsewhere now, so the test can read the ready line.
        node.log_path = os.path.join(node.dir, "node-restart.log")
        node.start()
        self.assertEqual(stored(node.pop_port, self.user), sent)


if __name__ == "__main__":
    unittest.main()
