"""Hard state survives: a clean restart of `up`, and a kill -9 of the node mid-delivery."""

import threading
import time
import unittest

import harness
from harness import DOMAIN


class RestartTest(unittest.TestCase):
    def new_cluster(self) -> harness.Cluster:
        c = harness.Cluster(nodes=1)
        self.addCleanup(c.cleanup)
        return c.start()

    def test_clean_restart_keeps_accounts_and_mail(self):
        c = self.new_cluster()
        users = [(f"keep{i}@{DOMAIN}", f"pw{i}") for i in range(3)]
        c.add_users(users)
        sent = {}
        for addr, _ in users:
            msg = harness.make_message(f"for {addr}", body=f"kept across restart\r\n.{addr}\r\n")
            r = harness.deliver(c.smtp_port(), addr, msg)
            self.assertEqual(r.code, 250, r)
            sent[addr] = msg
        before = {addr: harness.fetch_all(c.pop_port(), addr, pw) for addr, pw in users}
        self.assertEqual(c.stop(), 0, f"`up` did not exit cleanly on SIGTERM:\n{c.output()}")

        c.start()
        listed = harness.run_cli("user", "list", admin=c.admin_url()).stdout.split()
        for addr, _ in users:
            self.assertIn(addr, listed)
        for addr, pw in users:
            c.wait_ready_for_pop(addr, pw)
            after = harness.fetch_all(c.pop_port(), addr, pw)
            self.assertEqual(after, before[addr], f"mailbox of {addr} changed across a restart")
            self.assertEqual(len(after), 1)
            self.assertEqual(harness.split_trace(after[0][2])[1], sent[addr])
        # The restarted node takes new mail and new accounts too.
        c.add_user(f"new@{DOMAIN}", "pw-new")
        r = harness.deliver(c.smtp_port(), users[0][0], harness.make_message("after restart"))
        self.assertEqual(r.code, 250, r)
        self.assertEqual(len(harness.fetch_all(c.pop_port(), *users[0])), 2)
        # A wrong password still fails after the restart (hashes, not a blanket accept).
        with harness.PopRaw(c.pop_port()) as p:
            p.ok(f"USER {users[1][0]}")
            self.assertTrue(p.cmd("PASS wrong").startswith(b"-ERR [AUTH]"))

    def test_three_node_cluster_restart(self):
        c = harness.Cluster(nodes=3)
        self.addCleanup(c.cleanup)
        c.start()
        users = [(f"tri{i}@{DOMAIN}", f"pw{i}") for i in range(6)]
        c.add_users(users)
        c.wait_users_known([a for a, _ in users])
        for k, (addr, _) in enumerate(users):
            r = harness.deliver(c.smtp_port(k % 3), addr, harness.make_message(f"tri {addr}", body=f"{k}\r\n"))
            self.assertEqual(r.code, 250, r)
        before = {addr: harness.fetch_all(c.pop_port(0), addr, pw) for addr, pw in users}
        self.assertEqual(c.stop(), 0, c.output())
        c.start()
        for addr, pw in users:
            for i in range(3):
                c.wait_ready_for_pop(addr, pw, i)
                self.assertEqual(harness.fetch_all(c.pop_port(i), addr, pw), before[addr], f"{addr} via node {i}")

    def test_kill_9_loses_no_acknowledged_mail(self):
        c = self.new_cluster()
        users = [(f"crash{i}@{DOMAIN}", f"pw{i}") for i in range(3)]
        c.add_users(users)
        acked: list[tuple[str, str]] = []  # (user, Message-ID) that got 250
        attempted: list[str] = []
        cut: list[str] = []  # transactions the kill cut off before their final reply
        lock = threading.Lock()
        stop = threading.Event()
        port = c.smtp_port()

        def sender(k: int):
            seq = 0
            while not stop.is_set():
                try:
                    with harness.SmtpRaw(port, timeout=10) as s:
                        s.cmd("EHLO crash.test")
                        while not stop.is_set():
                            seq += 1
                            addr = users[(k + seq) % len(users)][0]
                            mid = f"<crash-{k}-{seq}@client.test>"
                            with lock:
                                attempted.append(mid)
                            try:
                                r = s.send_mail("s@elsewhere.test", [addr], harness.make_message(mid, msgid=mid), ehlo=False)
                            except (OSError, ConnectionError, ValueError):
                                with lock:
                                    cut.append(mid)
                                raise
                            if r.code == 250:
                                with lock:
                                    acked.append((addr, mid))
                except (OSError, ConnectionError, ValueError):
                    time.sleep(0.05)

        threads = [threading.Thread(target=sender, args=(k,), daemon=True) for k in range(3)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(acked) < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertGreaterEqual(len(acked), 40, "deliveries never got going")
        c.kill_node(0)
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(15)
        with lock:
            acked_now = list(acked)
            attempted_now = list(attempted)
        with lock:
            cut_now = list(cut)
        # Three senders keep a transaction open at every moment: the kill must cut at
        # least one mid-transaction, or this test did not test a crash during delivery.
        self.assertGreater(len(cut_now), 0, "the kill did not interrupt any delivery")
        c.stop()

        c.start()
        seen: dict[str, list[str]] = {}
        for addr, pw in users:
            c.wait_ready_for_pop(addr, pw)
            for uid, size, msg in harness.fetch_all(c.pop_port(), addr, pw):
                self.assertEqual(size, len(msg))
                mid = harness.header_value(msg, "Message-ID")
                seen.setdefault(mid, []).append(addr)
        dups = {m: a for m, a in seen.items() if len(a) > 1}
        self.assertEqual(dups, {}, "messages stored twice after the crash")
        missing = [(a, m) for a, m in acked_now if seen.get(m) != [a]]
        self.assertEqual(missing, [], f"{len(missing)} of {len(acked_now)} acknowledged messages lost\n{c.logs()}")
        # Nothing appears that was never sent.
        self.assertTrue(set(seen) <= set(attempted_now))


if __name__ == "__main__":
    unittest.main()
