"""Dynamic load balancing on a real 3-node cluster (`porcupine up --nodes 3`), driven by
`porcupine load` over every node's SMTP port:

- one node made slow (its stores take 40 ms longer: `PORCUPINE_TEST_STORE_DELAY_MS`,
  a test-only knob standing for a slow disk) receives measurably less new mail under
  `--balance porcupine`, while `static` does not adapt;
- a hot user (all the mail for one user) is spread over `spread` nodes under
  `porcupine`, and stays on one node under `static` (R = 1);
- POP3 retrieval reads the local copy when the node holds one (counted in /metrics);
- a node whose disk is nearly full (`--disk-reserve-mb` above its free space) gets no
  new mail, says so in status and /metrics, and a cluster with no room answers
  `452 4.3.1` (the message is not acknowledged).

All traffic goes to the clusters these tests start on 127.0.0.1.
"""

import json
import os
import re
import shutil
import smtplib
import subprocess
import tempfile
import time
import unittest

import faults
import harness
from harness import HOST
from serve_proc import ServeNode

DOMAIN = "balance.test"
SLOW_NODE = 2
STORE_DELAY_MS = 40
LOAD_TIMEOUT_S = 240
# A reserve no test machine's disk can satisfy: that node is nearly full at once.
RESERVE_HUGE_MB = 1 << 40


def users(n: int) -> list[tuple[str, str]]:
    return [(f"u{i}@{DOMAIN}", f"pw{i}") for i in range(n)]


def stored(cluster: harness.Cluster, i: int) -> int:
    """Messages stored on node i (its fragments), from its /v1/cluster."""
    return faults.admin_get(cluster, i, "/v1/cluster")["fragments"]["messages"]


def metric(cluster: harness.Cluster, i: int, name: str, labels: str = "") -> float:
    """One sample of node i's /metrics (0 when absent)."""
    status, text = harness.http_request(f"{cluster.admin_url(i)}/metrics")
    assert status == 200, text
    pat = re.compile(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", re.M)
    m = pat.search(text)
    return float(m.group(1)) if m else 0.0


def run_load(cluster: harness.Cluster, tmp: str, *args: str) -> dict:
    """`porcupine load --mode send` over every node's SMTP port; its JSON report."""
    out = os.path.join(tmp, f"load-{len(os.listdir(tmp))}.json")
    smtp = []
    for i in range(cluster.nodes):
        smtp += ["--smtp", f"{HOST}:{cluster.smtp_port(i)}"]
    cmd = [str(harness.BINARY), "load", *smtp, "--mode", "send", "--domain", DOMAIN,
           "--json", out, *args]
    cp = subprocess.run(cmd, capture_output=True, text=True, timeout=LOAD_TIMEOUT_S,
                        stdin=subprocess.DEVNULL)
    if cp.returncode != 0:
        raise AssertionError(f"porcupine load failed ({cp.returncode}):\n{cp.stdout}\n{cp.stderr}")
    with open(out) as f:
        return json.load(f)


class BalanceTest(unittest.TestCase):
    def start(self, *up_args: str, nodes: int = 3, n_users: int = 20) -> harness.Cluster:
        c = harness.Cluster(nodes=nodes, up_args=up_args).start()
        self.addCleanup(c.cleanup)
        c.add_users(users(n_users))
        c.wait_users_known([a for a, _ in users(n_users)])
        faults.wait_view(c, range(nodes), 30)
        return c

    def slow_node_share(self, balance: str) -> tuple[float, list[int]]:
        """Start 3 nodes under `balance`, slow node 2's stores, send 600 messages of 20
        users through all nodes; (node 2's share of the stored copies, per-node deltas)."""
        c = self.start("--balance", balance)
        c.kill_node(SLOW_NODE)
        faults.wait_view(c, [0, 1], 30)
        c.restart_node(SLOW_NODE, env={"PORCUPINE_TEST_STORE_DELAY_MS": str(STORE_DELAY_MS)})
        faults.wait_view(c, range(3), 30)
        c.wait_users_known([a for a, _ in users(20)], nodes=[SLOW_NODE])
        before = [stored(c, i) for i in range(3)]
        tmp = tempfile.mkdtemp(prefix="porcupine-balance-")
        r = run_load(c, tmp, "--users", "20", "--messages", "600", "--sessions", "12",
                     "--size", "fixed:2048")
        self.assertEqual(r["acknowledged"], 600, r)
        delta = [stored(c, i) - before[i] for i in range(3)]
        # R = 2: every acknowledged message is on exactly two nodes.
        self.assertEqual(sum(delta), 1200, delta)
        return delta[SLOW_NODE] / sum(delta), delta

    def test_a_slow_node_gets_less_new_mail_under_porcupine_but_not_under_static(self):
        share_p, delta_p = self.slow_node_share("porcupine")
        share_s, delta_s = self.slow_node_share("static")
        print(f"slow node share: porcupine {share_p:.3f} {delta_p}, static {share_s:.3f} {delta_s}",
              end=" ")
        # With R = 2 over 3 nodes an even share is 1/3 of the copies.
        self.assertLess(share_p, 0.25, f"porcupine did not steer mail away: {delta_p}")
        self.assertGreater(share_s, 0.28, f"static should ignore load: {delta_s}")
        self.assertLess(share_p, share_s * 0.75)

    def hot_user_nodes(self, balance: str) -> set[int]:
        c = self.start("--balance", balance, "--replicas", "1", "--spread", "3", n_users=1)
        tmp = tempfile.mkdtemp(prefix="porcupine-balance-")
        r = run_load(c, tmp, "--users", "1", "--messages", "300", "--sessions", "8",
                     "--size", "fixed:1024")
        self.assertEqual(r["acknowledged"], 300, r)
        box = faults.mailbox(c, 0, f"u0@{DOMAIN}")
        holders = faults.holders_by_id(box)
        self.assertEqual(len(holders), 300)
        return {n for hs in holders.values() for n in hs}

    def test_a_hot_user_is_spread_under_porcupine_and_pinned_under_static(self):
        self.assertEqual(self.hot_user_nodes("porcupine"), {0, 1, 2})
        self.assertEqual(len(self.hot_user_nodes("static")), 1)

    def test_retrieval_reads_the_local_copy_when_there_is_one(self):
        c = self.start(n_users=4)
        tmp = tempfile.mkdtemp(prefix="porcupine-balance-")
        run_load(c, tmp, "--users", "4", "--messages", "120", "--sessions", "4",
                 "--size", "fixed:512")
        for i in range(3):
            # Every message of every user, retrieved through node i.
            expect_local = 0
            total = 0
            for addr, _ in users(4):
                for hs in faults.holders_by_id(faults.mailbox(c, i, addr)).values():
                    total += 1
                    expect_local += i in hs
            local0 = metric(c, i, "porcupine_pop_reads_total", '{source="local"}')
            remote0 = metric(c, i, "porcupine_pop_reads_total", '{source="remote"}')
            for addr, pw in users(4):
                p = harness.pop_session(c.pop_port(i), addr, pw)
                for k in p.listing():
                    p.retr(k)
                p.quit()
            local = metric(c, i, "porcupine_pop_reads_total", '{source="local"}') - local0
            remote = metric(c, i, "porcupine_pop_reads_total", '{source="remote"}') - remote0
            self.assertEqual((local, remote), (expect_local, total - expect_local),
                             f"node {i}: reads local/remote")
            self.assertGreater(expect_local, 0)

    def test_a_nearly_full_node_takes_no_new_mail_and_a_full_cluster_answers_452(self):
        c = self.start(n_users=10)
        full = 1
        c.kill_node(full)
        faults.wait_view(c, [0, 2], 30)
        c.restart_node(full, extra_args=("--disk-reserve-mb", str(RESERVE_HUGE_MB)))
        faults.wait_view(c, range(3), 30)
        c.wait_users_known([a for a, _ in users(10)], nodes=[full])
        st = faults.admin_get(c, full, "/v1/cluster")
        self.assertTrue(st["disk"]["nearly_full"], st["disk"])
        before = stored(c, full)
        tmp = tempfile.mkdtemp(prefix="porcupine-balance-")
        r = run_load(c, tmp, "--users", "10", "--messages", "200", "--sessions", "4",
                     "--size", "fixed:512")
        self.assertEqual(r["acknowledged"], 200, r)
        self.assertEqual(stored(c, full), before, "a nearly full node was given new mail")
        # Every node knows (gossip and replies carry the flag) and says so.
        for i in range(3):
            row = [n for n in faults.admin_get(c, i, "/v1/cluster")["nodes"] if n["id"] == full][0]
            self.assertTrue(row["nearly_full"], f"node {i}: {row}")
            self.assertEqual(metric(c, i, "porcupine_node_nearly_full", f'{{node="{full}"}}'), 1.0)
        out = harness.run_cli("status", admin=c.admin_url(0)).stdout
        self.assertRegex(out, rf"(?m)^\s+{full}\s+FULL\s")
        # Reads still work on the full node: its POP3 serves every mailbox.
        p = harness.pop_session(c.pop_port(full), *users(10)[0])
        self.assertGreater(len(p.listing()), 0)
        p.quit()

    def test_a_single_node_with_no_room_answers_452_and_keeps_the_session(self):
        c = self.start(nodes=1, n_users=1)
        c.kill_node(0)
        c.restart_node(0, extra_args=("--disk-reserve-mb", str(RESERVE_HUGE_MB)))
        faults.wait_view(c, [0], 30)
        addr = users(1)[0][0]
        with smtplib.SMTP(HOST, c.smtp_port(0), timeout=30) as s:
            s.ehlo("client.test")
            with self.assertRaises(smtplib.SMTPDataError) as e:
                s.sendmail("a@client.test", [addr], b"Subject: x\r\n\r\nbody\r\n")
            self.assertEqual(e.exception.smtp_code, 452)
            self.assertIn(b"4.3.1", e.exception.smtp_error)
            # The session goes on.
            self.assertEqual(s.noop()[0], 250)
        box = faults.mailbox(c, 0, addr)
        self.assertEqual(box["messages"], [])


@unittest.skipUnless(os.geteuid() == 0 and shutil.which("mount"), "needs root to mount a small tmpfs")
class DiskWatchTest(unittest.TestCase):
    """The node's once-a-second free-space check against a real file system filling
    and emptying: a tmpfs data dir, a ballast file written and removed beside the data."""

    def test_the_nearly_full_flag_follows_the_free_space_both_ways(self):
        reserve_mb = 64
        node = ServeNode(f"disk_reserve_mb = {reserve_mb}")
        self.addCleanup(node.cleanup)
        data = os.path.join(node.dir, "data")
        os.makedirs(data)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", data], check=True)
        self.addCleanup(subprocess.run, ["umount", "-l", data], check=False)
        node.start()

        def nearly_full_within(want: bool, timeout_s: float = 10) -> dict:
            deadline = time.monotonic() + timeout_s
            while True:
                disk = harness.http_get_json(node.admin_url + "/v1/cluster")["disk"]
                if disk["nearly_full"] == want or time.monotonic() > deadline:
                    return disk
                time.sleep(0.2)

        self.assertFalse(nearly_full_within(False)["nearly_full"])
        # Leave half the reserve free.
        st = os.statvfs(data)
        ballast = os.path.join(data, "ballast")
        with open(ballast, "wb") as f:
            f.truncate(0)
            chunk = b"\0" * (1 << 20)
            for _ in range(st.f_bavail * st.f_frsize // (1 << 20) - reserve_mb // 2):
                f.write(chunk)
        disk = nearly_full_within(True)
        self.assertTrue(disk["nearly_full"], disk)
        self.assertLess(disk["free_bytes"], reserve_mb << 20)
        self.assertIn("disk nearly full", node.log())
        # A message now gets 452 4.3.1 (a single node: no one else has room).
        node.add_user(f"d0@{DOMAIN}", "pw")
        with smtplib.SMTP(HOST, node.smtp_port, timeout=30) as s:
            with self.assertRaises(smtplib.SMTPDataError) as e:
                s.sendmail("a@client.test", [f"d0@{DOMAIN}"], b"Subject: x\r\n\r\nbody\r\n")
            self.assertEqual(e.exception.smtp_code, 452)
        os.remove(ballast)
        disk = nearly_full_within(False)
        self.assertFalse(disk["nearly_full"], disk)
        self.assertIn("taking new mail again", node.log())
        with smtplib.SMTP(HOST, node.smtp_port, timeout=30) as s:
            self.assertEqual(s.sendmail("a@client.test", [f"d0@{DOMAIN}"], b"Subject: y\r\n\r\nbody\r\n"), {})


if __name__ == "__main__":
    unittest.main()
