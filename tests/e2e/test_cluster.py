"""Three nodes: any node takes mail for anyone and serves any mailbox; the cluster
notices a kill -9 and a return, and mail flow survives both.

The tests share one running cluster but nothing else: each has its own users (created
up front in setUpClass, one group per test), begins by bringing every node back and
waiting for one view of all three, and checks only its own users' mailboxes. They can
run alone, in any order (`python3 -m unittest test_cluster.ClusterTest.test_h_...`).

Every listing a node shows is checked: only refusals the protocol allows
(`-ERR [SYS/TEMP]`, `[IN-USE]`, SMTP 4xx) are retried, never a wrong mailbox."""

import subprocess
import threading
import time
import unittest

import harness
from harness import DOMAIN

NODES = 3
REPLICAS = 2  # README: default copies of each message
# Users per test (a prefix each): no test sees another's mail.
GROUPS = {"b": 8, "c": 2, "c2": 1, "d": 8, "d2": 8, "e": 12, "f": 6, "g": 6, "h": 6}


def group(name: str) -> list[tuple[str, str]]:
    """The users of one test group: (address, password)."""
    return [(f"{name}u{i:02d}@{DOMAIN}", f"pw-{name}{i:02d}") for i in range(GROUPS[name])]


def deliver_retrying(port: int, addr: str, msg: bytes, budget_s: float = 15) -> harness.SmtpReply:
    """Deliver, retrying 4xx replies and refused connections for up to budget_s."""
    deadline = time.monotonic() + budget_s
    last = None
    while True:
        try:
            r = harness.deliver(port, addr, msg)
            if r.code == 250 or r.code >= 500:
                return r
            if not 400 <= r.code < 500:
                raise AssertionError(f"delivery to {addr}: unexpected reply {r}")
            last = r
        except (OSError, ConnectionError) as e:
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"delivery to {addr} via port {port} kept failing: {last!r}")
        time.sleep(0.3)


class ClusterTest(unittest.TestCase):
    cluster: harness.Cluster

    @classmethod
    def setUpClass(cls):
        cls.cluster = harness.Cluster(nodes=NODES).start()
        cls.addClassCleanup(cls.cluster.cleanup)
        users = [u for g in GROUPS for u in group(g)]
        cls.cluster.add_users(users)
        # Account changes are replicated; wait until every node knows every account.
        cls.cluster.wait_users_known([a for a, _ in users])

    def setUp(self):
        # user -> Message-ID -> bytes sent (and acknowledged) by this test
        self.sent: dict[str, dict[str, bytes]] = {}
        # Messages whose delivery never got a final answer: each may be present at most once.
        self.uncertain: dict[str, dict[str, bytes]] = {}
        # Whatever an earlier test left down comes back first: this test starts healthy.
        for i in range(NODES):
            if not self.cluster.node_running(i):
                self.cluster.restart_node(i)
        self.assert_agree(range(NODES), 30)

    def users(self, name: str) -> list[tuple[str, str]]:
        """This test's users, registered in self.sent."""
        us = group(name)
        for addr, _ in us:
            self.sent.setdefault(addr, {})
            self.uncertain.setdefault(addr, {})
        return us

    def send(self, port: int, addr: str, mid: str, subject: str, body: str = "hello\r\n", retry: bool = False) -> None:
        """Deliver one message, assert 250, and remember it as sent."""
        msg = harness.make_message(subject, body=body, msgid=mid)
        r = deliver_retrying(port, addr, msg) if retry else harness.deliver(port, addr, msg)
        self.assertEqual(r.code, 250, f"{addr} via port {port}: {r}")
        self.sent[addr][mid] = msg

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

    def check_mailboxes(self, via_nodes, users, only_required=None) -> None:
        """Every mailbox read through every listed node holds exactly what was sent.

        With only_required (user -> Message-IDs), other sent messages may be missing
        (unreachable while their nodes are down), but nothing unknown or doubled.
        Collects every problem before failing, so the message shows the whole damage."""
        problems = []
        for addr, pw in users:
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

    def holders(self, addr: str, via: int = 0) -> dict[str, list[int]]:
        """Message id (UIDL) -> nodes holding a copy, from `GET /v1/mailboxes/{addr}` on node `via`."""
        box = harness.http_get_json(f"{self.cluster.admin_url(via)}/v1/mailboxes/{addr}", timeout=10)
        return {m["id"]: sorted(m["holders"]) for m in box["messages"]}

    def fill(self, users, tag: str, via_nodes=range(NODES)) -> None:
        """One message per user and node in via_nodes, each sent through that node."""
        for addr, _ in users:
            for i in via_nodes:
                mid = f"<{addr.split('@')[0]}-{tag}-{i}@client.test>"
                self.send(self.cluster.smtp_port(i), addr, mid, f"{addr} {tag} via node {i}",
                          body=f"sent through node {i}\r\n.dot\r\n")

    def test_b_deliver_anywhere_read_anywhere(self):
        users = self.users("b")
        self.fill(users, "via")
        self.check_mailboxes(range(NODES), users)
        # Every message is stored REPLICAS times, on distinct nodes, and the users' mail
        # as a whole lies on more than one node.
        all_holders = set()
        for addr, _ in users:
            hs = self.holders(addr)
            self.assertEqual(len(hs), NODES, f"{addr}: {hs}")
            for mid, h in hs.items():
                self.assertEqual(len(set(h)), REPLICAS, f"{addr} {mid}: holders {h}")
                all_holders |= set(h)
        self.assertGreaterEqual(len(all_holders), 2, all_holders)

    def test_c_delete_through_one_node(self):
        users = self.users("c")
        self.fill(users, "del")
        addr, pw = users[0]
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
        self.check_mailboxes(range(NODES), users)

    def test_c2_one_pop_session_cluster_wide(self):
        addr, pw = self.users("c2")[0]
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
            if r.code != 550 or "5.1.1" not in r.text or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual(r.code, 250, r)
        self.sent[addr][mid] = msg
        self.check_mailboxes(range(NODES), [(addr, pw)])

    def test_d_kill_one_node_and_bring_it_back(self):
        self.kill_and_bring_back(2, self.users("d"))

    def test_d2_kill_the_bootstrap_node_and_bring_it_back(self):
        # Node 0 started the registry (--bootstrap, first Raft leader) and is re-run
        # with that same flag on its old data.
        self.kill_and_bring_back(0, self.users("d2"))

    def wait_up_reports_exit(self, victim: int, lines_before: int, timeout_s: float = 10) -> str:
        """The line `up` prints when it notices node `victim` died (it polls every 0.5 s)."""
        deadline = time.monotonic() + timeout_s
        while True:
            for line in self.cluster.output().splitlines()[lines_before:]:
                if line.startswith(f"porcupine: node {victim} exited (") and "not restarting it" in line:
                    return line
            if time.monotonic() > deadline:
                self.fail(f"`up` did not report node {victim}'s death: {self.cluster.output().splitlines()[lines_before:]}")
            time.sleep(0.1)

    def kill_and_bring_back(self, victim: int, users) -> None:
        survivors = [i for i in range(NODES) if i != victim]
        self.fill(users, "before")
        epoch_before = self.assert_agree(range(NODES), 10)
        lines_before = len(self.cluster.output().splitlines())
        # A POP3 session through the victim holds a mailbox lock when it dies.
        held_addr, held_pw = users[0]
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
        for k, (addr, _) in enumerate(users):
            i = survivors[k % 2]
            mid = f"<{addr.split('@')[0]}-while-{victim}-down@client.test>"
            self.send(self.cluster.smtp_port(i), addr, mid, f"{addr} while node {victim} down", retry=True)
        # With two copies of everything, no mailbox lost anything with one node gone.
        self.check_mailboxes(survivors, users)
        # A delete while the victim is down must stay deleted once it returns, though
        # the victim may still hold a copy of the message.
        del_addr, del_pw = users[1]
        p = harness.pop_session(self.cluster.pop_port(survivors[1]), del_addr, del_pw)
        gone = harness.split_trace(p.retr(1))[1]
        p.ok("DELE 1")
        self.assertTrue(p.quit().startswith(b"+OK"))
        del self.sent[del_addr][harness.header_value(gone, "Message-ID")]
        # Two of three registry voters are left: account changes still work (a 503 while
        # the registry elects a new leader is the one refusal allowed).
        new_addr, new_pw = f"while-{victim}-down-{time.monotonic_ns()}@{DOMAIN}", "pw-new"
        self.cluster.add_users([(new_addr, new_pw)], node=survivors[0])
        self.sent[new_addr] = {}

        # `up` reports the death, and does not restart the node: its ports stay free and
        # nothing answers on them.
        self.wait_up_reports_exit(victim, lines_before)
        self.assertTrue(harness.ports_free(self.cluster.base_port + 10 * victim, 1, reuse=True),
                        f"something listens on node {victim}'s ports: `up` restarted it?")
        self.assertFalse(self.cluster.node_running(victim))

        self.cluster.restart_node(victim)
        t0 = time.monotonic()
        epoch_back = self.assert_agree(range(NODES), 10, epoch_above=epoch_down)
        print(f"back: epoch {epoch_back} after {time.monotonic() - t0:.1f} s", end=" ")
        # Its mail reappears: every mailbox, read through every node including the
        # returned one. The first listing each node shows must be complete.
        self.check_mailboxes(range(NODES), users)
        held_on_victim = sum(1 for addr, _ in users for h in self.holders(addr).values() if victim in h)
        self.assertGreater(held_on_victim, 0, "the returned node holds none of this test's mail")
        # The returned node learned the account added while it was away, and takes mail again.
        self.cluster.wait_users_known([new_addr], nodes=[victim], timeout_s=10)
        for addr in (users[2][0], new_addr):
            mid = f"<after-{victim}-return-{addr.split('@')[0]}@client.test>"
            self.send(self.cluster.smtp_port(victim), addr, mid, "after return", retry=True)
        self.check_mailboxes(range(NODES), [users[2], (new_addr, new_pw)])

    def test_e_kill_during_delivery_loses_and_duplicates_nothing(self):
        users = self.users("e")
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
                addr = users[(7 * k + seq) % len(users)][0]
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
                    if isinstance(r, harness.SmtpReply) and not 400 <= r.code < 500:
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
            # Keep sending until some deliveries were acknowledged on the new view.
            n_at_view = len(acked)
            t_end = time.monotonic() + 20
            while len(acked) < n_at_view + 10 and time.monotonic() < t_end:
                time.sleep(0.05)
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
        self.check_mailboxes(survivors, users)

        # Bring it back: nothing lost, nothing doubled, through all three nodes.
        self.cluster.restart_node(victim)
        self.assert_agree(range(NODES), 10)
        self.check_mailboxes(range(NODES), users)

    def test_f_quick_restart_inside_failure_detector_window(self):
        # kill -9 and re-run at once: the node comes back before (or just as) the others
        # notice, with empty soft state. Its mailboxes must still be served completely.
        users = self.users("f")
        self.fill(users, "pre")
        victim = 1
        self.assert_agree(range(NODES), 10)
        self.cluster.kill_node(victim)
        self.cluster.restart_node(victim)
        self.assert_agree(range(NODES), 15)
        self.check_mailboxes([victim, 0], users)
        for addr, _ in users:
            mid = f"<{addr.split('@')[0]}-after-quick-restart@client.test>"
            self.send(self.cluster.smtp_port(victim), addr, mid, "after quick restart", retry=True)
        self.check_mailboxes(range(NODES), users)

    def alone_on_node_0(self, users, tag: str, while_alone=None) -> dict[str, set[str]]:
        """Kill nodes 1 and 2, deliver one message per user to node 0 alone (one copy:
        the only live node), check node 0 serves them, run `while_alone()`, bring 1 and
        2 back. Returns the Message-IDs delivered while alone, per user."""
        epoch = self.assert_agree(range(NODES), 10)
        for victim in (1, 2):
            self.cluster.kill_node(victim)
        alone: dict[str, set[str]] = {}
        try:
            self.assert_agree([0], 15, epoch_above=epoch)
            for addr, _ in users:
                mid = f"<{addr.split('@')[0]}-{tag}@client.test>"
                self.send(self.cluster.smtp_port(0), addr, mid, "node 0 alone", retry=True)
                alone[addr] = {mid}
            # Mail whose both copies are on the dead nodes cannot be listed now; the new
            # mail must be, and nothing may be doubled.
            self.check_mailboxes([0], users, only_required=alone)
            if while_alone is not None:
                while_alone()
        finally:
            for victim in (1, 2):
                if not self.cluster.node_running(victim):
                    self.cluster.restart_node(victim)
        return alone

    def test_g_two_nodes_down_mail_still_flows(self):
        # README: losing quorum stops account changes, never mail flow.
        users = self.users("g")
        self.fill(users, "pre")

        def no_account_changes() -> None:
            # README: `POST /v1/users` answers 503 when the registry is unavailable.
            cp = harness.run_cli("user", "add", f"no-quorum@{DOMAIN}", "--password", "pw",
                                 admin=self.cluster.admin_url(0), check=False, timeout=90)
            self.assertNotEqual(cp.returncode, 0, "an account change went through without a registry quorum")
            self.assertIn("(HTTP 503)", cp.stdout + cp.stderr, "expected 503 registry unavailable")
            print(f"\n  user add without quorum: {(cp.stdout + cp.stderr).strip()[:120]}", end=" ")

        self.alone_on_node_0(users, "alone", while_alone=no_account_changes)
        self.assert_agree(range(NODES), 15)
        self.check_mailboxes(range(NODES), users)
        # The refused change was not applied later either, once the quorum was back: a
        # write after it in the log order is seen, and the refused one is not.
        marker = f"after-quorum-{time.monotonic_ns()}@{DOMAIN}"
        self.cluster.add_users([(marker, "pw")])
        self.cluster.wait_users_known([marker], nodes=[1], timeout_s=15)
        self.assertNotIn(f"no-quorum@{DOMAIN}", harness.run_cli("user", "list", admin=self.cluster.admin_url(1)).stdout.split())

    def test_h_copies_repaired_after_return(self):
        # Mail delivered while node 0 was alone has one copy. Once the others are back
        # the copy count is repaired by the managers' repair passes (which leave messages
        # younger than 15 s alone, as their other copies may still be in flight), so
        # every message soon has two holders and losing node 0 loses nothing.
        users = self.users("h")
        self.fill(users, "pre")
        alone = self.alone_on_node_0(users, "alone")
        self.assert_agree(range(NODES), 15)
        for addr, mids in alone.items():
            hs = self.holders(addr, via=1)
            self.assertEqual(len(hs), len(self.sent[addr]), f"{addr}: {hs}")
            # The message written while node 0 was alone has its one copy there (the
            # count may already be repaired if a pass ran: then it has two).
            self.assertTrue(any(0 in h for h in hs.values()), f"{addr}: {hs}")
        deadline = time.monotonic() + 60
        while True:
            short = {}
            for addr, _ in users:
                n = sum(1 for h in self.holders(addr, via=1).values() if len(set(h)) < REPLICAS)
                if n:
                    short[addr] = n
            if not short:
                break
            self.assertLess(time.monotonic(), deadline, f"still short of {REPLICAS} copies: {short}")
            time.sleep(1)
        for addr, _ in users:
            for mid, h in self.holders(addr, via=1).items():
                self.assertEqual(len(set(h)), REPLICAS, f"{addr} {mid}: holders {h} after repair")
        st = self.statuses(range(NODES))
        figures = {i: (s["fragments"]["messages"], s["repair"]) for i, s in st.items()}
        self.assertGreater(sum(s["repair"]["copies_made_total"] for s in st.values()), 0, figures)
        epoch = self.assert_agree(range(NODES), 10)
        self.cluster.kill_node(0)
        try:
            self.assert_agree([1, 2], 10, epoch_above=epoch)
            self.check_mailboxes([1, 2], users)
        finally:
            self.cluster.restart_node(0)
        self.assert_agree(range(NODES), 15)


if __name__ == "__main__":
    unittest.main()
