"""Three nodes: any node takes mail for anyone and serves any mailbox; the cluster
notices a kill -9 and a return, and mail flow survives both.

The test methods share one cluster and run in name order (a, b, c2, c3, c, d2, d, e,
f, g, h); each later one builds on the mail the earlier ones sent (`sent`)."""

import subprocess
import threading
import json
import time
import urllib.request
import unittest

import harness
from harness import DOMAIN

NODES = 3
USERS = [(f"u{i:02d}@{DOMAIN}", f"pw-u{i:02d}") for i in range(30)]
REPLICAS = 2  # README: default copies of each message


def deliver_retrying(port: int, addr: str, msg: bytes, budget_s: float = 15) -> harness.SmtpReply:
    """Deliver, retrying 4xx replies and refused connections for up to budget_s."""
    deadline = time.monotonic() + budget_s
    last = None
    while True:
        try:
            r = harness.deliver(port, addr, msg)
            if r.code == 250 or r.code >= 500:
                return r
            last = r
        except (OSError, ConnectionError, ValueError) as e:
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"delivery to {addr} via port {port} kept failing: {last!r}")
        time.sleep(0.3)


class ClusterTest(unittest.TestCase):
    cluster: harness.Cluster
    sent: dict[str, dict[str, bytes]] = {}  # user -> Message-ID -> bytes sent
    # Messages whose delivery never got a final answer: each may be present at most once.
    uncertain: dict[str, dict[str, bytes]] = {}

    @classmethod
    def setUpClass(cls):
        cls.cluster = harness.Cluster(nodes=NODES).start()
        cls.addClassCleanup(cls.cluster.cleanup)
        cls.cluster.add_users(USERS)
        cls.sent = {addr: {} for addr, _ in USERS}
        cls.uncertain = {addr: {} for addr, _ in USERS}
        # Account changes are replicated; wait until every node knows every account.
        deadline = time.monotonic() + 20
        for i in range(NODES):
            while True:
                listed = set(harness.run_cli("user", "list", admin=cls.cluster.admin_url(i)).stdout.split())
                if {a for a, _ in USERS} <= listed:
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"node {i} never listed all users: {sorted(listed)}")
                time.sleep(0.2)

    def statuses(self, nodes) -> dict[int, dict]:
        return {i: self.cluster.status(i) for i in nodes}

    @staticmethod
    def alive_ids(st: dict) -> list[int]:
        return sorted(n["id"] for n in st["nodes"] if n["alive"])

    def assert_agree(self, nodes, timeout_s: float, epoch_above: int = -1) -> int:
        """Within timeout_s every listed node reports the same epoch and exactly `nodes` alive."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                st = self.statuses(nodes)
                epochs = {s["epoch"] for s in st.values()}
                ok = (
                    len(epochs) == 1
                    and min(epochs) > epoch_above
                    and all(sorted(s["live"]) == sorted(nodes) for s in st.values())
                    and all(self.alive_ids(s) == sorted(nodes) for s in st.values())
                )
                if ok:
                    return epochs.pop()
            except (AssertionError, ValueError, subprocess.TimeoutExpired) as e:
                st = repr(e)
            if time.monotonic() > deadline:
                summary = st if isinstance(st, str) else {
                    i: (s["epoch"], s["live"], self.alive_ids(s)) for i, s in st.items()
                }
                self.fail(f"nodes {list(nodes)} did not agree within {timeout_s} s: {summary}\n{self.cluster.logs(30)}")
            time.sleep(0.25)

    def check_mailboxes(self, via_nodes, users=None, only_required=None) -> None:
        """Every mailbox read through every listed node holds exactly what was sent.

        With only_required (user -> Message-IDs), other sent messages may be missing
        (unreachable while their nodes are down), but nothing unknown or doubled.
        Collects every problem before failing, so the message shows the whole damage."""
        problems = []
        for addr, pw in users or USERS:
            expected = self.sent[addr]
            maybe = self.uncertain.get(addr, {})
            uid_sets = []
            for j in via_nodes:
                got = harness.fetch_all(self.cluster.pop_port(j), addr, pw)
                by_mid = {}
                for uid, size, msg in got:
                    if size != len(msg):
                        problems.append(f"{addr} via node {j}: LIST says {size} octets, RETR gave {len(msg)}")
                    body = harness.split_trace(msg)[1]
                    mid = harness.header_value(body, "Message-ID")
                    if mid in by_mid:
                        problems.append(f"{addr} via node {j}: {mid} listed twice")
                    by_mid[mid] = body
                missing = set(expected) - set(by_mid)
                if only_required is not None:
                    missing &= set(only_required.get(addr, ()))
                extra = set(by_mid) - set(expected) - set(maybe)
                for mid in sorted(missing):
                    problems.append(f"{addr} via node {j}: missing {mid}")
                for mid in sorted(extra):
                    problems.append(f"{addr} via node {j}: unexpected {mid}")
                for mid, body in by_mid.items():
                    want = expected.get(mid, maybe.get(mid))
                    if want is not None and body != want:
                        problems.append(f"{addr} via node {j}: {mid} not byte-exact")
                if len({u for u, _, _ in got}) != len(got):
                    problems.append(f"{addr} via node {j}: UIDLs not unique")
                uid_sets.append(sorted(u for u, _, _ in got))
            if not all(u == uid_sets[0] for u in uid_sets):
                problems.append(f"{addr}: UIDLs differ between nodes {list(via_nodes)}")
        if problems:
            self.fail(f"{len(problems)} mailbox problem(s):\n  " + "\n  ".join(problems[:40]))

    def test_a_status_agrees(self):
        epoch = self.assert_agree(range(NODES), 10)
        st = self.statuses(range(NODES))
        for i, s in st.items():
            self.assertEqual(s["epoch"], epoch)
            self.assertEqual(len(s["nodes"]), NODES)
            # Buckets are spread over all three nodes.
            buckets = [n["buckets"] for n in s["nodes"]]
            self.assertTrue(all(b > 0 for b in buckets), buckets)

    def test_b_deliver_anywhere_read_anywhere(self):
        for addr, _ in USERS:
            for i in range(NODES):
                mid = f"<{addr.split('@')[0]}-via-{i}@client.test>"
                msg = harness.make_message(f"{addr} via node {i}", body=f"sent through node {i}\r\n.dot\r\n", msgid=mid)
                r = harness.deliver(self.cluster.smtp_port(i), addr, msg)
                self.assertEqual(r.code, 250, f"{addr} via node {i}: {r}")
                self.sent[addr][mid] = msg
        self.check_mailboxes(range(NODES))
        # Every message is stored REPLICAS times across the cluster, and on more than one node.
        st = self.statuses(range(NODES))
        per_node = [s["fragments"]["messages"] for s in st.values()]
        self.assertEqual(sum(per_node), REPLICAS * len(USERS) * NODES, per_node)
        self.assertGreaterEqual(sum(1 for n in per_node if n > 0), 2, per_node)

    def test_c_delete_through_one_node(self):
        addr, pw = USERS[0]
        p = harness.pop_session(self.cluster.pop_port(0), addr, pw)
        uids = p.uidls()
        victim = p.retr(1)
        p.ok("DELE 1")
        self.assertTrue(p.quit().startswith(b"+OK"))
        mid = harness.header_value(harness.split_trace(victim)[1], "Message-ID")
        del self.sent[addr][mid]
        for j in (1, 2):
            got = harness.fetch_all(self.cluster.pop_port(j), addr, pw)
            self.assertNotIn(uids[1], [u for u, _, _ in got], f"deleted message still listed via node {j}")
        self.check_mailboxes(range(NODES), users=[USERS[0]])

    def test_c2_one_pop_session_cluster_wide(self):
        addr, pw = USERS[2]
        first = harness.pop_session(self.cluster.pop_port(0), addr, pw)
        try:
            for j in (1, 2):
                with harness.PopRaw(self.cluster.pop_port(j)) as p:
                    p.ok(f"USER {addr}")
                    r = p.cmd(f"PASS {pw}")
                    self.assertTrue(r.startswith(b"-ERR [IN-USE]"), f"second session via node {j}: {r!r}")
            first.quit()
        finally:
            first.close()
        p = harness.pop_session(self.cluster.pop_port(1), addr, pw, timeout_s=10)
        p.quit()

    def test_c3_account_added_via_another_node(self):
        addr, pw = f"late@{DOMAIN}", "pw-late"
        self.cluster.add_user(addr, pw, node=1)
        self.sent[addr] = {}
        mid = "<late-1@client.test>"
        msg = harness.make_message("late user", msgid=mid)
        # Replication of the account to node 2 may take a moment: retry only 550 5.1.1.
        deadline = time.monotonic() + 10
        while True:
            r = harness.deliver(self.cluster.smtp_port(2), addr, msg)
            if r.code != 550 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual(r.code, 250, r)
        self.sent[addr][mid] = msg
        self.check_mailboxes(range(NODES), users=[(addr, pw)])

    def test_d_kill_one_node_and_bring_it_back(self):
        self.kill_and_bring_back(2)

    def test_d2_kill_the_bootstrap_node_and_bring_it_back(self):
        # Node 0 started the registry (--bootstrap, first Raft leader) and is re-run
        # with that same flag on its old data.
        self.kill_and_bring_back(0)

    def kill_and_bring_back(self, victim: int) -> None:
        survivors = [i for i in range(NODES) if i != victim]
        epoch_before = self.assert_agree(range(NODES), 10)
        lines_before = len(self.cluster.output().splitlines())
        # A POP3 session through the victim holds a mailbox lock when it dies.
        held_addr, held_pw = USERS[10 + victim]
        held = harness.pop_session(self.cluster.pop_port(victim), held_addr, held_pw)
        held.listing()
        self.cluster.kill_node(victim)
        held.close()

        t0 = time.monotonic()
        epoch_down = self.assert_agree(survivors, 10, epoch_above=epoch_before)
        took = time.monotonic() - t0
        print(f"\n  view without node {victim}: epoch {epoch_down} after {took:.1f} s", end=" ")

        # The dead node's POP3 lock does not keep the mailbox shut for long.
        try:
            p = harness.pop_session(self.cluster.pop_port(survivors[0]), held_addr, held_pw, timeout_s=10)
            p.quit()
        except harness.PopError as e:
            self.fail(f"mailbox locked by a session on the dead node is still refused after 10 s: {e}")

        # Mail to everyone still flows, through both survivors.
        for k, (addr, _) in enumerate(USERS):
            i = survivors[k % 2]
            mid = f"<{addr.split('@')[0]}-while-{victim}-down@client.test>"
            msg = harness.make_message(f"{addr} while node {victim} down", msgid=mid)
            r = deliver_retrying(self.cluster.smtp_port(i), addr, msg)
            self.assertEqual(r.code, 250, f"{addr} via node {i}: {r}")
            self.sent[addr][mid] = msg
        # With two copies of everything, no mailbox lost anything with one node gone.
        self.check_mailboxes(survivors)
        # A delete while the victim is down must stay deleted once it returns, though
        # the victim may still hold a copy of the message.
        del_addr, del_pw = USERS[20 + victim]
        p = harness.pop_session(self.cluster.pop_port(survivors[1]), del_addr, del_pw)
        gone = harness.split_trace(p.retr(1))[1]
        p.ok("DELE 1")
        self.assertTrue(p.quit().startswith(b"+OK"))
        del self.sent[del_addr][harness.header_value(gone, "Message-ID")]
        # Two of three registry voters are left: account changes still work.
        new_addr, new_pw = f"while-{victim}-down@{DOMAIN}", "pw-new"
        deadline = time.monotonic() + 15
        while True:
            cp = harness.run_cli("user", "add", new_addr, "--password", new_pw,
                                 admin=self.cluster.admin_url(survivors[0]), check=False)
            if cp.returncode == 0:
                break
            if time.monotonic() > deadline:
                self.fail(f"no account changes with node {victim} down: {cp.stdout}{cp.stderr}")
            time.sleep(0.5)
        self.sent[new_addr] = {}

        # `up` reports the death (and does not restart the node).
        time.sleep(1.0)
        new_lines = self.cluster.output().splitlines()[lines_before:]
        self.assertTrue(any(f"node {victim}" in l for l in new_lines), f"`up` did not report the dead node: {new_lines}")

        self.cluster.restart_node(victim)
        t0 = time.monotonic()
        epoch_back = self.assert_agree(range(NODES), 10, epoch_above=epoch_down)
        print(f"back: epoch {epoch_back} after {time.monotonic() - t0:.1f} s", end=" ")
        # Its mail reappears: every mailbox, read through every node including the returned one.
        deadline = time.monotonic() + 15
        while True:
            try:
                self.check_mailboxes(range(NODES))
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        st = self.cluster.status(victim)
        self.assertGreater(st["fragments"]["messages"], 0, "the returned node holds no mail")
        # The returned node learned the account added while it was away, and takes mail again.
        deadline = time.monotonic() + 10
        while new_addr not in harness.run_cli("user", "list", admin=self.cluster.admin_url(victim)).stdout.split():
            if time.monotonic() > deadline:
                self.fail(f"node {victim} never learned {new_addr} after returning")
            time.sleep(0.3)
        for addr in (USERS[1][0], new_addr):
            mid = f"<after-{victim}-return-{addr.split('@')[0]}@client.test>"
            msg = harness.make_message("after return", msgid=mid)
            r = deliver_retrying(self.cluster.smtp_port(victim), addr, msg)
            self.assertEqual(r.code, 250, r)
            self.sent[addr][mid] = msg
        self.check_mailboxes(range(NODES), users=[USERS[1], (new_addr, new_pw)])

    def test_e_kill_during_delivery_loses_and_duplicates_nothing(self):
        victim = 1
        survivors = [0, 2]
        epoch_before = self.assert_agree(range(NODES), 10)
        stop = threading.Event()
        lock = threading.Lock()
        acked: list[tuple[str, str, bytes]] = []
        unanswered: list[tuple[str, str, bytes]] = []
        failures: list[str] = []
        retried: list[str] = []  # the temporary answers seen, for the record

        def sender(k: int) -> None:
            # One logical message at a time, retried with the same Message-ID on 4xx
            # (as a real MTA would): it must end up stored exactly once.
            seq = 0
            while not stop.is_set():
                seq += 1
                addr = USERS[(7 * k + seq) % len(USERS)][0]
                mid = f"<storm-{k}-{seq}@client.test>"
                msg = harness.make_message(f"storm {k}/{seq}", body="during a crash\r\n", msgid=mid)
                port = self.cluster.smtp_port(survivors[(k + seq) % 2])
                deadline = time.monotonic() + 20
                while True:
                    try:
                        r = harness.deliver(port, addr, msg)
                    except (OSError, ConnectionError, ValueError) as e:
                        r = e
                    if isinstance(r, harness.SmtpReply) and r.code == 250:
                        with lock:
                            acked.append((addr, mid, msg))
                        break
                    if isinstance(r, harness.SmtpReply) and r.code >= 500:
                        with lock:
                            failures.append(f"{addr} {mid}: {r}")
                        break
                    with lock:
                        retried.append(repr(r)[:80])
                    if time.monotonic() > deadline:
                        with lock:
                            unanswered.append((addr, mid, msg))
                        break
                    time.sleep(0.2)

        threads = [threading.Thread(target=sender, args=(k,), daemon=True) for k in range(4)]
        for t in threads:
            t.start()
        try:
            t_end = time.monotonic() + 20
            while len(acked) < 30 and time.monotonic() < t_end:
                time.sleep(0.05)
            self.assertGreaterEqual(len(acked), 30, "deliveries never got going")
            n_before_kill = len(acked)
            self.cluster.kill_node(victim)
            self.assert_agree(survivors, 10, epoch_above=epoch_before)
            time.sleep(2.0)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        self.assertEqual(failures, [], "permanent failures during a node crash (must be 4xx)")
        self.assertGreater(len(acked), n_before_kill, "no delivery succeeded after the kill")
        print(
            f"\n  {len(acked)} acknowledged ({n_before_kill} before the kill), {len(retried)} retries "
            f"{sorted(set(retried))[:3]}, {len(unanswered)} never acknowledged",
            end=" ",
        )
        for addr, mid, msg in acked:
            self.sent[addr][mid] = msg
        for addr, mid, msg in unanswered:
            self.uncertain[addr][mid] = msg
        self.check_mailboxes(survivors)

        # Bring it back: nothing lost, nothing doubled, through all three nodes.
        self.cluster.restart_node(victim)
        self.assert_agree(range(NODES), 10)
        deadline = time.monotonic() + 15
        while True:
            try:
                self.check_mailboxes(range(NODES))
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def test_f_quick_restart_inside_failure_detector_window(self):
        # kill -9 and re-run at once: the node comes back before (or just as) the others
        # notice, with empty soft state. Its mailboxes must still be served completely.
        victim = 1
        self.assert_agree(range(NODES), 10)
        self.cluster.kill_node(victim)
        self.cluster.restart_node(victim)
        self.assert_agree(range(NODES), 15)
        deadline = time.monotonic() + 15
        while True:
            try:
                self.check_mailboxes([victim, 0])
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        for addr, _ in USERS[:10]:
            mid = f"<{addr.split('@')[0]}-after-quick-restart@client.test>"
            msg = harness.make_message("after quick restart", msgid=mid)
            r = deliver_retrying(self.cluster.smtp_port(victim), addr, msg)
            self.assertEqual(r.code, 250, r)
            self.sent[addr][mid] = msg
        self.check_mailboxes(range(NODES), users=USERS[:10])

    def test_g_two_nodes_down_mail_still_flows(self):
        # README: losing quorum stops account changes, never mail flow.
        self.assert_agree(range(NODES), 10)
        for victim in (1, 2):
            self.cluster.kill_node(victim)
        try:
            self.assert_agree([0], 15)
            alone = {}
            for addr, _ in USERS:
                mid = f"<{addr.split('@')[0]}-alone@client.test>"
                msg = harness.make_message("node 0 alone", msgid=mid)
                r = deliver_retrying(self.cluster.smtp_port(0), addr, msg)
                self.assertEqual(r.code, 250, f"{addr} with only node 0 left: {r}")
                self.sent[addr][mid] = msg
                alone[addr] = {mid}
            # Mail whose both copies are on the dead nodes cannot be listed now; the new
            # mail must be, and nothing may be doubled.
            self.check_mailboxes([0], only_required=alone)
            cp = harness.run_cli("user", "add", f"no-quorum@{DOMAIN}", "--password", "pw",
                                 admin=self.cluster.admin_url(0), check=False, timeout=90)
            self.assertNotEqual(cp.returncode, 0, "an account change went through without a registry quorum")
            print(f"\n  user add without quorum: {(cp.stdout + cp.stderr).strip()[:120]}", end=" ")
        finally:
            for victim in (1, 2):
                self.cluster.restart_node(victim)
        self.assert_agree(range(NODES), 15)
        ClusterTest.rejoined_at = time.monotonic()
        deadline = time.monotonic() + 20
        while True:
            try:
                self.check_mailboxes(range(NODES))
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def test_h_copies_repaired_after_return(self):
        # The mail delivered while node 0 was alone had one copy. Once the others are
        # back the copy count is repaired by the managers' repair passes (which leave
        # messages younger than 15 s alone, as their other copies may still be in
        # flight), so every message soon has two holders and losing node 0 loses nothing.
        rejoined = getattr(ClusterTest, "rejoined_at", None)
        self.assertIsNotNone(rejoined, "test_g did not bring the nodes back")
        deadline = time.monotonic() + 60
        while True:
            short = {}
            for addr, _ in USERS:
                box = json.loads(urllib.request.urlopen(
                    f"{self.cluster.admin_url(1)}/v1/mailboxes/{addr}", timeout=10).read())
                n = sum(1 for m in box["messages"] if len(m["holders"]) < REPLICAS)
                if n:
                    short[addr] = n
            if not short:
                break
            self.assertLess(time.monotonic(), deadline, f"still short of {REPLICAS} copies: {short}")
            time.sleep(1)
        st = self.statuses(range(NODES))
        figures = {i: (s["fragments"]["messages"], s["repair"]) for i, s in st.items()}
        epoch = self.assert_agree(range(NODES), 10)
        self.cluster.kill_node(0)
        try:
            self.assert_agree([1, 2], 10, epoch_above=epoch)
            deadline = time.monotonic() + 10
            while True:
                try:
                    self.check_mailboxes([1, 2])
                    break
                except AssertionError as e:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"{e}\nstatus before the kill (messages, repair): {figures}") from None
                    time.sleep(0.5)
        finally:
            self.cluster.restart_node(0)
        self.assert_agree(range(NODES), 15)


if __name__ == "__main__":
    unittest.main()
