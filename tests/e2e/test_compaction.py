"""Segment compaction and `user del` through the binary (issue 14, storage part).

* kill -9 at every step of a segment's compaction (the node is held at the step by
  PORCUPINE_COMPACT_PAUSE_AT), restart: every acknowledged message reads back
  byte-exact over POP3, deleted ones stay deleted, and once compaction has run
  the segment directory holds nothing but live segments and the REMOVED list;
* deleting most of a mailbox brings disk use back close to the live data;
* `user del` removes the mail (a user re-created under the same name sees none of
  it and the space returns), `user del --keep-mail` keeps it on disk.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
import unittest

import harness
from harness import DOMAIN, Cluster, deliver, fetch_all, pop_session, run_cli, split_trace

PASSWORD = "pw-compaction"
MESSAGE_BYTES = 40_000
SEGMENT_RE = re.compile(r"^\d{8}\.seg$")
NODE_TOML = """
segment_size_mb = 1
compact_live_ratio_min = 0.5
compact_interval_secs = 1
compact_rate_mb_per_sec = 0
"""


def body_for(user: str, i: int) -> bytes:
    """A ~40 KB message whose every line names its user and number."""
    line = f"{user} message {i} line ".encode()
    lines = [line + str(n).encode().rjust(6, b"0") + b" " + bytes(range(65, 91)) * 2 for n in range(
        MESSAGE_BYTES // (len(line) + 59))]
    head = (f"From: sender@elsewhere.test\r\nTo: {user}\r\nSubject: {user} {i}\r\n"
            f"Message-ID: <{user}-{i}@client.test>\r\n\r\n").encode()
    return head + b"\r\n".join(lines) + b"\r\n"


def live_bytes(*sent: dict[str, bytes]) -> int:
    return sum(len(b) for d in sent for b in d.values())


def segments_dir(c: Cluster, node: int = 0) -> str:
    return os.path.join(c.data, f"node-{node}", "segments")


def segment_usage(c: Cluster, node: int = 0) -> tuple[int, list[str]]:
    """Bytes of segment files, and any file that is neither a segment nor REMOVED."""
    total, strays = 0, []
    d = segments_dir(c, node)
    for name in os.listdir(d):
        if SEGMENT_RE.match(name):
            total += os.path.getsize(os.path.join(d, name))
        elif name != "REMOVED":
            strays.append(name)
    return total, strays


def stored_bodies(port: int, user: str) -> dict[str, bytes]:
    """Subject -> message as sent (trace fields removed)."""
    out = {}
    for _, _, raw in fetch_all(port, user, PASSWORD):
        _, rest = split_trace(raw)
        subject = harness.header_value(rest, "Subject")
        out[subject] = rest
    return out


def delete_where(port: int, user: str, doomed) -> int:
    """DELE every message whose Subject `doomed` accepts, QUIT; returns how many."""
    p = pop_session(port, user, PASSWORD)
    try:
        n = 0
        for number in sorted(p.listing()):
            subject = harness.header_value(p.retr(number), "Subject")
            if doomed(subject):
                p.ok(f"DELE {number}")
                n += 1
        p.quit()
        return n
    finally:
        p.close()


class CompactionTest(unittest.TestCase):
    def start_cluster(self, env: dict | None = None, nodes: int = 1) -> Cluster:
        conf_dir = tempfile.mkdtemp(prefix="porcupine-compaction-")
        conf = os.path.join(conf_dir, "node.toml")
        with open(conf, "w") as f:
            f.write(NODE_TOML)
        saved = {k: os.environ.get(k) for k in (env or {})}
        os.environ.update(env or {})
        try:
            c = Cluster(nodes=nodes, up_args=("--node-config", conf)).start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.addCleanup(c.cleanup)
        return c

    def fill(self, c: Cluster, user: str, count: int) -> dict[str, bytes]:
        sent = {}
        for i in range(count):
            body = body_for(user, i)
            r = deliver(c.smtp_port(), user, body)
            self.assertEqual(r.code, 250, r.text)
            sent[f"{user} {i}"] = body
        return sent

    def wait_log(self, c: Cluster, text: str, timeout_s: float = 60) -> None:
        path = os.path.join(c.data, "node-0.log")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with open(path, "rb") as f:
                if text.encode() in f.read():
                    return
            time.sleep(0.2)
        self.fail(f"no {text!r} in the node log within {timeout_s} s\n{c.logs()}")

    def compact(self, c: Cluster, node: int = 0) -> str:
        return run_cli("node", "compact", admin=c.admin_url(node)).stdout

    def test_kill_9_at_every_compaction_step_loses_nothing_and_leaks_nothing(self):
        for step in ("chunk-copied", "copied", "index-durable", "removed"):
            with self.subTest(step=step):
                c = self.start_cluster({"PORCUPINE_COMPACT_PAUSE_AT": step})
                alice, bob = f"alice@{DOMAIN}", f"bob@{DOMAIN}"
                c.add_users([(alice, PASSWORD), (bob, PASSWORD)])
                sent_a = self.fill(c, alice, 100)
                sent_b = self.fill(c, bob, 10)
                deleted = delete_where(c.pop_port(), alice,
                                       lambda s: int(s.split()[1]) % 10 != 0)
                self.assertEqual(deleted, 90)
                before, _ = segment_usage(c)
                self.wait_log(c, "compaction paused for good")
                c.kill_node(0)
                c.restart_node(0)
                c.wait_ready_for_pop(alice, PASSWORD, timeout_s=60)
                kept = {s: b for s, b in sent_a.items() if int(s.split()[1]) % 10 == 0}
                self.assertEqual(stored_bodies(c.pop_port(), alice), kept)
                self.assertEqual(stored_bodies(c.pop_port(), bob), sent_b)
                out = self.compact(c)
                self.assertIn("compacted", out)
                after, strays = segment_usage(c)
                print(f"\n{step}: segment bytes before {before}, after {after}, live {live_bytes(kept, sent_b)}")
                self.assertEqual(strays, [], f"leftover files after a crash at {step}")
                live = live_bytes(kept, sent_b)
                self.assertLess(after, before / 2, f"{step}: before {before} after {after}")
                # Live data, plus at most the newest segment and one half-live one.
                self.assertLess(after, live * 2 + 2 * (1 << 20), f"{step}: after {after} live {live}")
                self.assertEqual(stored_bodies(c.pop_port(), alice), kept)
                self.assertEqual(stored_bodies(c.pop_port(), bob), sent_b)
                c.cleanup()

    def test_user_del_removes_mail_from_every_node_and_keep_mail_keeps_it(self):
        c = self.start_cluster(nodes=2)
        gone, kept_user = f"gone@{DOMAIN}", f"kept@{DOMAIN}"
        c.add_users([(gone, PASSWORD), (kept_user, PASSWORD)])
        c.wait_users_known([gone, kept_user])
        self.fill(c, gone, 40)
        sent_kept = self.fill(c, kept_user, 40)
        # Fill the open segment so the users' mail sits in sealed ones.
        filler = f"filler@{DOMAIN}"
        c.add_users([(filler, PASSWORD)])
        c.wait_users_known([filler])
        self.fill(c, filler, 30)
        before = [segment_usage(c, i)[0] for i in range(2)]

        out = run_cli("user", "del", gone, admin=c.admin_url(0)).stdout
        # Two copies of each of the 40 messages, one per node.
        self.assertIn("mail removed: 80 messages on nodes [0,1]", out)
        out = run_cli("user", "del", kept_user, "--keep-mail", admin=c.admin_url(0)).stdout
        self.assertIn("mail kept", out)
        for i in range(2):
            self.compact(c, i)
            after, strays = segment_usage(c, i)
            print(f"\nuser del: node {i} segment bytes before {before[i]}, after {after}")
            self.assertEqual(strays, [])
            self.assertLess(after, before[i] - 30 * MESSAGE_BYTES,
                            f"node {i}: before {before[i]} after {after}")

        # Re-created under the same names: the deleted user's mail is gone, the kept
        # user's is still there.
        c.add_users([(gone, PASSWORD), (kept_user, PASSWORD)])
        c.wait_users_known([gone, kept_user])
        c.wait_ready_for_pop(gone, PASSWORD)
        self.assertEqual(fetch_all(c.pop_port(), gone, PASSWORD), [])
        self.assertEqual(stored_bodies(c.pop_port(1), kept_user), sent_kept)
        # New mail for the re-created user is delivered and is all it sees.
        body = body_for(gone, 99)
        self.assertEqual(deliver(c.smtp_port(1), gone, body).code, 250)
        self.assertEqual(stored_bodies(c.pop_port(), gone), {f"{gone} 99": body})


if __name__ == "__main__":
    unittest.main()
