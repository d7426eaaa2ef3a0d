"""A cluster across hosts: three network namespaces, each its own address, one
identical node.toml (listeners on 0.0.0.0, seeds, bootstrap_expect = 3, node id from
the host name), cluster RPC over mutual TLS; then faults only a network makes —
partitions (one node, one-way), 30 % loss, 200 ms ± 50 ms delay — and crashes, each
followed by heal. After every one: no acknowledged message lost, at most one POP3
session per mailbox, views converged within CONVERGE_S.

Needs root and /dev/net/tun (CI has both); skipped otherwise, saying why.
"""

import os
import poplib
import signal
import smtplib
import ssl
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import netns  # noqa: E402

NODES = 3
DOMAIN = "netns.test"
USERS = [(f"u{k}@{DOMAIN}", f"pw-{k}") for k in range(4)]
# Views converge within this after a heal or a restart (measured: a few seconds).
CONVERGE_S = 30


class Hosts(unittest.TestCase):
    """A NetCluster of `hosts` hosts for the class, and the client-side helpers."""

    hosts = NODES

    @classmethod
    def setUpClass(cls):
        cls.c = netns.NetCluster(cls.hosts)
        t0 = time.monotonic()
        cls.c.start(wait=False)
        try:
            cls.formed_s = cls.c.wait_formed(90)
            for addr, pw in USERS:
                cls.c.cli("user", "add", addr, "--password", pw)
        except BaseException:
            cls.c.cleanup()
            raise
        print(f"\n  {cls.hosts} hosts formed one cluster and registry in "
              f"{time.monotonic() - t0:.1f} s", file=sys.stderr)
        cls.acked: dict[str, set[str]] = {a: set() for a, _ in USERS}
        cls.seq = 0

    @classmethod
    def tearDownClass(cls):
        try:
            cls.c.stop()
        finally:
            cls.c.cleanup()

    def tearDown(self):
        # Every test leaves the network whole and every node running.
        self.c.heal()
        for i in range(self.hosts):
            self.c.signal_node(i, signal.SIGCONT)
            p = self.c.procs.get(i)
            if p is None or p.poll() is not None:
                self.c.start_node(i)

    # -- helpers

    def send(self, node: int, rcpt: str, tag: str, timeout: float = 15) -> int:
        """Send one message through host `node`; the SMTP reply code of DATA (or of the
        first refusal). A 250 is recorded as acknowledged."""
        cls = type(self)
        cls.seq += 1
        mid = f"<{tag}-{cls.seq}@client.netns.test>"
        body = (f"From: client@{DOMAIN}\r\nTo: {rcpt}\r\nMessage-ID: {mid}\r\n"
                f"Subject: {tag}\r\n\r\n{tag} via node {node}\r\n")
        try:
            with self.c.client():
                s = smtplib.SMTP(netns.host_ip(node), netns.SMTP_PORT, timeout=timeout)
            with s:
                s.ehlo("client.netns.test")
                s.sendmail(f"client@{DOMAIN}", [rcpt], body)
        except smtplib.SMTPRecipientsRefused as e:
            return list(e.recipients.values())[0][0]
        except smtplib.SMTPResponseException as e:
            return e.smtp_code
        except (OSError, smtplib.SMTPException):
            return 0
        cls.acked[rcpt].add(mid)
        return 250

    def pop_login(self, node: int, user: str, pw: str, timeout: float = 10):
        """A POP3 session through host `node`, upgraded with STLS: off loopback the
        node takes no plaintext password."""
        with self.c.client():
            p = poplib.POP3(netns.host_ip(node), netns.POP_PORT, timeout=timeout)
        p.stls(ssl.create_default_context(cafile=self.c.ca_file()))
        p.user(user)
        p.pass_(pw)
        return p

    def pop_retry(self, node: int, user: str, pw: str, deadline_s: float = 20):
        """`pop_login`, waiting out [SYS/TEMP] answers (soft state settling)."""
        end = time.monotonic() + deadline_s
        while True:
            try:
                return self.pop_login(node, user, pw)
            except poplib.error_proto as e:
                if b"[SYS/TEMP]" not in e.args[0] or time.monotonic() > end:
                    raise
                time.sleep(0.5)

    def mailbox(self, node: int, user: str, pw: str, deadline_s: float = 30) -> list[str]:
        """Message-IDs in `user`'s mailbox via host `node` (waits out [SYS/TEMP] and
        [IN-USE] answers)."""
        end = time.monotonic() + deadline_s
        last = ""
        while time.monotonic() < end:
            try:
                p = self.pop_login(node, user, pw)
                try:
                    ids = []
                    count, _ = p.stat()
                    for k in range(1, count + 1):
                        _, lines, _ = p.top(k, 0)
                        for ln in lines:
                            if ln.lower().startswith(b"message-id:"):
                                ids.append(ln.split(b":", 1)[1].strip().decode())
                    return ids
                finally:
                    p.quit()
            except (poplib.error_proto, OSError) as e:
                last = str(e)
                time.sleep(0.5)
        raise AssertionError(f"node {node} never served {user}'s mailbox: {last}")

    def assert_nothing_lost(self, via: int = 0) -> None:
        for addr, pw in USERS:
            have = self.mailbox(via, addr, pw)
            missing = self.acked[addr] - set(have)
            self.assertFalse(missing, f"{addr}: acknowledged but not retrievable via node {via}: "
                                      f"{sorted(missing)}")

    def converge(self, members=None) -> float:
        return self.c.wait_view(list(range(self.hosts)) if members is None else members,
                                CONVERGE_S)


@unittest.skipIf(netns.available(), f"multi-host tests: {netns.available()}")
class MultiHost(Hosts):
    """Three hosts through every fault, in order."""

    # -- the tests, in order

    def test_a_identical_config_forms_one_cluster(self):
        for i in range(NODES):
            st = self.c.cluster(i)
            self.assertEqual(sorted(st["live"]), list(range(NODES)))
            rpcs = sorted(n["rpc"] for n in st["nodes"])
            self.assertEqual(rpcs, [f"{netns.host_ip(k)}:{netns.RPC_PORT}" for k in range(NODES)],
                             "nodes must advertise their host address, never 0.0.0.0")
            reg = st["registry"]
            self.assertEqual(reg["voters"], list(range(NODES)))
        inits = [i for i in range(NODES) if "account registry initialised here" in self.c.logs(i, 400)]
        self.assertEqual(inits, [0], "exactly the lowest id initialises the registry")

    def test_a2_no_plaintext_password_off_loopback(self):
        with self.c.client():
            p = poplib.POP3(netns.host_ip(1), netns.POP_PORT, timeout=10)
        try:
            self.assertNotIn("USER", p.capa(),
                             "CAPA offers USER on a plaintext connection from another host")
            with self.assertRaises(poplib.error_proto) as e:
                p.user(USERS[0][0])
                p.pass_(USERS[0][1])
            self.assertIn(b"STLS", e.exception.args[0])
        finally:
            p.quit()

    def test_b_mail_through_every_node(self):
        for i in range(NODES):
            for addr, _ in USERS:
                self.assertEqual(self.send(i, addr, "every-node"), 250)
        for i in range(NODES):
            addr, pw = USERS[i]
            have = self.mailbox(i, addr, pw)
            self.assertTrue(self.acked[addr] <= set(have), f"node {i}: {addr}")

    def test_c_partition_one_node(self):
        t0 = time.monotonic()
        self.c.partition([2])
        self.c.wait_view([0, 1], CONVERGE_S)
        self.c.wait_view([2], CONVERGE_S)
        split_s = time.monotonic() - t0
        majority = [self.send(0, a, "majority-side") for a, _ in USERS]
        self.assertEqual(majority, [250] * len(USERS), "the majority side takes mail")
        minority = [self.send(2, a, "minority-side") for a, _ in USERS]
        for code in minority:
            self.assertTrue(400 <= code < 500,
                            f"the minority side must answer 4xx, not take mail it cannot "
                            f"replicate with the majority: {minority}")
        # At most one POP3 session per mailbox: one on each side at once is refused.
        addr, pw = USERS[0]
        a = self.pop_retry(0, addr, pw)
        try:
            with self.assertRaises(poplib.error_proto, msg="two POP3 sessions on one mailbox"):
                b = self.pop_login(2, addr, pw)
                b.quit()
        finally:
            a.quit()
        t1 = time.monotonic()
        self.c.heal()
        heal_s = self.converge()
        self.assert_nothing_lost(via=2)
        print(f"\n  partition of node 2: split seen in {split_s:.1f} s, minority replies "
              f"{minority}, healed views in {heal_s:.1f} s ({time.monotonic() - t1:.1f} s "
              f"to all mail readable)", file=sys.stderr)

    def test_d_one_way_partition(self):
        # Node 1 stops hearing node 0; node 0 still hears node 1.
        self.c.block([0], [1])
        time.sleep(4)
        codes = [self.send(k % NODES, a, "one-way") for k, (a, _) in enumerate(USERS)]
        for code in codes:
            self.assertTrue(code == 250 or 400 <= code < 500, codes)
        self.c.heal()
        heal_s = self.converge()
        self.assert_nothing_lost(via=1)
        print(f"\n  one-way partition 0->1: replies {codes}, views converged {heal_s:.1f} s "
              f"after heal", file=sys.stderr)

    def test_e_loss_30_percent(self):
        self.c.degrade(loss=0.30)
        t0 = time.monotonic()
        codes = [self.send(k % NODES, a, "lossy", timeout=30) for k, (a, _) in enumerate(USERS * 2)]
        took = time.monotonic() - t0
        for code in codes:
            self.assertTrue(code in (0, 250) or 400 <= code < 500, codes)
        self.c.heal()
        heal_s = self.converge()
        self.assert_nothing_lost()
        print(f"\n  30 % loss between nodes: {codes.count(250)}/{len(codes)} acknowledged in "
              f"{took:.1f} s, views converged {heal_s:.1f} s after heal", file=sys.stderr)

    def test_f_delay_200ms_jitter(self):
        self.c.degrade(delay_ms=200, jitter_ms=50)
        t0 = time.monotonic()
        codes = [self.send(k % NODES, a, "slow", timeout=30) for k, (a, _) in enumerate(USERS * 2)]
        took = time.monotonic() - t0
        self.assertGreaterEqual(codes.count(250), len(codes) // 2,
                                f"a slow network must still carry mail: {codes}")
        self.c.heal()
        heal_s = self.converge()
        self.assert_nothing_lost()
        print(f"\n  200 ± 50 ms between nodes: {codes.count(250)}/{len(codes)} acknowledged, "
              f"{took / len(codes):.2f} s per message, views converged {heal_s:.1f} s after heal",
              file=sys.stderr)

    def test_g_kill_9_and_rejoin(self):
        self.c.kill_node(1)
        self.c.wait_view([0, 2], CONVERGE_S)
        for a, _ in USERS:
            self.assertEqual(self.send(0, a, "one-down"), 250)
        self.c.start_node(1)
        rejoin_s = self.converge()
        self.assert_nothing_lost(via=1)
        print(f"\n  kill -9 of node 1: rejoined in {rejoin_s:.1f} s", file=sys.stderr)

    def test_h_sigstop(self):
        self.c.signal_node(2, signal.SIGSTOP)
        self.c.wait_view([0, 1], CONVERGE_S)
        for a, _ in USERS:
            self.assertEqual(self.send(1, a, "paused"), 250)
        self.c.signal_node(2, signal.SIGCONT)
        self.converge()
        self.assert_nothing_lost(via=2)

    def test_i_restart_every_node_keeps_one_registry(self):
        self.c.stop()
        for i in range(NODES):
            self.c.start_node(i)
        self.c.wait_formed(90)
        inits = sum(self.c.logs(i, 4000).count("account registry initialised here")
                    for i in range(NODES))
        self.assertEqual(inits, 1, "a restart must never initialise a second registry")
        users = self.c.cli("user", "list", node=2).stdout
        for addr, _ in USERS:
            self.assertIn(addr, users)
        self.assert_nothing_lost(via=2)


@unittest.skipIf(netns.available(), f"multi-host tests: {netns.available()}")
class FiveHosts(Hosts):
    """Five hosts: a partition that cuts off a minority of two, not just one node."""

    hosts = 5

    def test_minority_of_two_refuses_and_heals(self):
        t0 = time.monotonic()
        self.c.partition([3, 4])
        self.c.wait_view([0, 1, 2], CONVERGE_S)
        self.c.wait_view([3, 4], CONVERGE_S)
        split_s = time.monotonic() - t0
        majority = [self.send(k % 3, a, "five-majority") for k, (a, _) in enumerate(USERS)]
        self.assertEqual(majority, [250] * len(USERS), "the side of three takes mail")
        minority = [self.send(3 + k % 2, a, "five-minority") for k, (a, _) in enumerate(USERS)]
        for code in minority:
            self.assertTrue(400 <= code < 500,
                            f"the side of two of five must answer 4xx: {minority}")
        ready = [netns_ready(self.c, i) for i in range(5)]
        self.assertEqual(ready, [True, True, True, False, False],
                         "/readyz: the minority side is not ready")
        addr, pw = USERS[1]
        a = self.pop_retry(1, addr, pw)
        try:
            with self.assertRaises(poplib.error_proto, msg="a POP3 session on each side"):
                b = self.pop_login(4, addr, pw)
                b.quit()
        finally:
            a.quit()
        self.c.heal()
        heal_s = self.converge()
        self.assert_nothing_lost(via=4)
        print(f"\n  5 hosts, partition of {{3, 4}}: split seen in {split_s:.1f} s, minority "
              f"replies {minority}, healed views in {heal_s:.1f} s", file=sys.stderr)


def netns_ready(c: "netns.NetCluster", i: int) -> bool:
    """Whether host `i` answers 200 on /readyz (no token needed)."""
    import urllib.error
    import urllib.request
    with c.client():
        try:
            with urllib.request.urlopen(f"{c.admin_url(i)}/readyz", timeout=5) as r:
                return r.status == 200
        except urllib.error.HTTPError as e:
            return e.code == 200


if __name__ == "__main__":
    unittest.main()
