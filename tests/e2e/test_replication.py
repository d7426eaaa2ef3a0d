"""Replication under faults, on a 3-node cluster with the default R = 2:

1. kill -9 of a node during sustained delivery, restart ~5 s later;
2. SIGSTOP of a node for longer than the failure timeout, then SIGCONT;
3. a delete while a replica is down stays deleted after the replica returns;
4. `porcupine node remove` of a dead node restores 2 copies of everything;
5. a crash of the whole cluster loses no acknowledged message.

Each test runs its own cluster (they start in well under a second). What "exact"
means for the storms: every Message-ID that got `250` is listed exactly once, in the
right mailbox, through every node; a Message-ID whose connection died after the final
dot (outcome unknown to the sender) may be listed at most once; nothing else may be
listed (a message that only ever got 4xx was promised nothing).
"""

import os
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import faults  # noqa: E402
import harness  # noqa: E402
from harness import DOMAIN  # noqa: E402

NODES = 3
REPLICAS = 2  # README: `up --nodes 3` stores each message on 2 nodes
# ARCHITECTURE: repair passes run after every view change and every
# `repair_interval_secs` (default 30); test 3 waits for passes, so it asks for 5.
REPAIR_INTERVAL_S = 5
KEEP_DATA = os.environ.get("PORCUPINE_E2E_KEEP") == "1"


class ReplicationTest(unittest.TestCase):
    def start_cluster(self, users: dict[str, str], up_args: tuple[str, ...] = ()) -> harness.Cluster:
        # PORCUPINE_E2E_KEEP=1 keeps the data dir (and its node-*.log) for a post-mortem.
        data = tempfile.mkdtemp(prefix=f"porcupine-repl-{self._testMethodName}-") if KEEP_DATA else None
        c = harness.Cluster(nodes=NODES, data=data, up_args=up_args)
        self.addCleanup(c.cleanup)
        if KEEP_DATA:
            print(f"\n  data and logs kept in {data}", end=" ")
        c.start()
        c.add_users(list(users.items()))
        faults.wait_users_known(c, range(NODES), list(users))
        faults.wait_view(c, range(NODES), 20)
        return c

    @staticmethod
    def users(prefix: str, n: int) -> dict[str, str]:
        return {f"{prefix}{i}@{DOMAIN}": f"pw-{prefix}{i}" for i in range(n)}

    def deliver_retrying(self, c: harness.Cluster, port: int, user: str, msg: bytes, budget_s: float = 15):
        """Deliver one message, retrying 4xx / refused connections; must end in 250."""
        deadline = time.monotonic() + budget_s
        last = None
        while time.monotonic() < deadline:
            try:
                last = harness.deliver(port, user, msg)
                if last.code == 250:
                    return last
                if last.code >= 500:
                    break
            except (OSError, ConnectionError, ValueError) as e:
                last = e
            time.sleep(0.3)
        self.fail(f"delivery to {user} via port {port} did not get 250: {last!r}")

    def assert_exact_everywhere(self, c: harness.Cluster, users: dict[str, str], rec: faults.StormRecord,
                                nodes, what: str) -> None:
        """Every node's POP3 lists exactly the acknowledged messages (see module doc).

        On a mismatch, waits 15 s and reads again, so the failure says whether the
        problem was transient or stays."""
        first = {}
        seen = {}
        for j in nodes:
            seen[j] = faults.read_mailboxes(c, j, users)
            problems = faults.compare(seen[j], rec.acked, rec.uncertain)
            if problems:
                first[j] = faults.shorten(problems)
        if not first:
            j = min(nodes)
            present = {mid for listed in seen[j].values() for _, mid in listed}
            print(f"\n  {what}: exact through nodes {list(nodes)}; "
                  f"{len(present & set(rec.uncertain))} of {len(rec.uncertain)} uncertain present", end=" ")
            copies = faults.copy_problems(c, j, seen[j], rec.acked, REPLICAS)
            if copies:
                self.fail(f"{what}: POP3 listings were exact, but /v1/mailboxes via node {j} shows "
                          f"{len(copies)} problems (every acknowledged message must have exactly "
                          f"{REPLICAS} holders): {dict(list(copies.items())[:8])}\n"
                          f"repair {faults.repair_sums(c, nodes)}\n{faults.log_excerpt(c)}")
            return
        time.sleep(15)
        later = {}
        for j in nodes:
            problems = faults.compare(faults.read_mailboxes(c, j, users), rec.acked, rec.uncertain)
            later[j] = faults.shorten(problems) if problems else "exact"
        self.fail(
            f"{what}: POP3 listings do not match the {len(rec.acked)} acknowledged messages "
            f"({len(rec.uncertain)} uncertain, {len(rec.abandoned)} abandoned after 4xx)\n"
            f"first read, per node: {first}\n15 s later: {later}\n"
            f"views: {faults.view_summary(c, range(NODES))}\n{faults.log_excerpt(c)}"
        )

    def storm_report(self, name: str, rec: faults.StormRecord) -> None:
        temp = sorted(rec.temp_replies.items(), key=lambda kv: -kv[1])[:4]
        print(
            f"\n  {name}: {len(rec.acked)} acked, {len(rec.uncertain)} uncertain, "
            f"{len(rec.abandoned)} abandoned; temporary answers {temp}",
            end=" ",
        )

    # --- 1 -----------------------------------------------------------------------------

    def test_1_kill_9_during_delivery_and_restart(self):
        users = self.users("k", 6)
        c = self.start_cluster(users)
        victim = 1
        epoch0 = faults.wait_view(c, range(NODES), 10)
        storm = faults.Storm(c, list(users), [c.smtp_port(i) for i in range(NODES)], "kill", threads=3).start()
        try:
            self.assertGreaterEqual(storm.wait_acked(30, 20), 30, "deliveries never got going")
            c.kill_node(victim)
            t_kill = time.monotonic()
            survivors = [i for i in range(NODES) if i != victim]
            epoch_down = faults.wait_view(c, survivors, 15, epoch_above=epoch0)
            time.sleep(max(0.0, 5.0 - (time.monotonic() - t_kill)))
            acked_while_down = storm.acked_count()
            c.restart_node(victim)
            t_restart = time.monotonic()
            faults.wait_view(c, range(NODES), 20, epoch_above=epoch_down)
            # Some traffic acknowledged on the re-formed cluster too.
            n_back = storm.acked_count()
            self.assertGreater(storm.wait_acked(n_back + 20, 20), n_back + 19, "no deliveries after the rejoin")
        finally:
            rec = storm.stop(retry_budget_s=20)
        self.storm_report("kill -9 storm", rec)
        self.assertEqual(rec.failures, [], "permanent (5xx) answers while a node crashed")
        acked_down = [t for t in rec.ack_times if t_kill < t < t_restart]
        self.assertGreater(len(acked_down), 0, f"no delivery got 250 while node {victim} was down")
        self.assertGreater(acked_while_down, 0)
        faults.wait_view(c, range(NODES), 20)
        self.assert_exact_everywhere(c, users, rec, range(NODES), "after kill -9 and restart")

    # --- 2 -----------------------------------------------------------------------------

    def test_2_sigstop_longer_than_failure_timeout(self):
        users = self.users("s", 6)
        c = self.start_cluster(users)
        victim = 1
        survivors = [i for i in range(NODES) if i != victim]
        epoch0 = faults.wait_view(c, range(NODES), 10)
        storm = faults.Storm(c, list(users), [c.smtp_port(i) for i in range(NODES)], "stop", threads=3).start()
        pid = None
        try:
            self.assertGreaterEqual(storm.wait_acked(30, 20), 30, "deliveries never got going")
            pid = faults.pause_node(c, victim)
            self.addCleanup(faults.resume_pid, pid)
            t_stop = time.monotonic()
            # The premise: the survivors must notice and form a view without it.
            epoch_down = faults.wait_view(c, survivors, 12, epoch_above=epoch0)
            noticed_s = time.monotonic() - t_stop
            # Stay stopped ~6.5 s in all (and at least 1 s past the new view).
            time.sleep(max(1.0, 6.5 - (time.monotonic() - t_stop)))
            faults.resume_pid(pid)
            t_cont = time.monotonic()
            print(f"\n  survivors dropped node {victim} after {noticed_s:.1f} s; "
                  f"stopped {t_cont - t_stop:.1f} s", end=" ")
            faults.wait_view(c, range(NODES), 25, epoch_above=epoch_down)
            n_back = storm.acked_count()
            self.assertGreater(storm.wait_acked(n_back + 20, 20), n_back + 19, "no deliveries after the rejoin")
        finally:
            if pid is not None:
                faults.resume_pid(pid)
            rec = storm.stop(retry_budget_s=20)
        self.storm_report("SIGSTOP storm", rec)
        self.assertEqual(rec.failures, [], "permanent (5xx) answers while a node was stopped")
        self.assertGreater(len([t for t in rec.ack_times if t_stop < t < t_cont]), 0,
                           f"no delivery got 250 while node {victim} was stopped")
        faults.wait_view(c, range(NODES), 20)
        self.assert_exact_everywhere(c, users, rec, range(NODES), "after SIGSTOP / SIGCONT")

    # --- 3 -----------------------------------------------------------------------------

    def test_3_delete_while_a_replica_is_down(self):
        user, pw = f"del@{DOMAIN}", "pw-del"
        c = self.start_cluster({user: pw}, up_args=("--repair-interval-secs", str(REPAIR_INTERVAL_S)))
        n_messages = 12
        for k in range(n_messages):
            msg = harness.make_message(f"del {k}", msgid=f"<del-{k}@client.test>")
            self.deliver_retrying(c, c.smtp_port(k % NODES), user, msg)
        box = faults.mailbox(c, 0, user)
        holders = faults.holders_by_id(box)
        self.assertEqual(len(holders), n_messages, box)
        for mid, h in holders.items():
            self.assertEqual(len(set(h)), REPLICAS, f"message {mid} holders {h}: {box}")
        # The victim: the node holding the most copies (every message it holds can be
        # resurrected by it).
        counts = {i: sum(1 for h in holders.values() if i in h) for i in range(NODES)}
        victim = max(counts, key=lambda i: (counts[i], i))
        survivors = [i for i in range(NODES) if i != victim]
        on_victim = sorted(m for m, h in holders.items() if victim in h)
        self.assertGreaterEqual(len(on_victim), 2, counts)

        epoch0 = faults.wait_view(c, range(NODES), 10)
        c.kill_node(victim)
        epoch_down = faults.wait_view(c, survivors, 15, epoch_above=epoch0)

        # Delete half of the victim's messages through a survivor (DELE + QUIT).
        p = harness.pop_session(c.pop_port(survivors[0]), user, pw)
        uidls = p.uidls()
        self.assertEqual(sorted(uidls.values()), sorted(holders), "UIDLs are not the admin API's message ids")
        to_delete = set(on_victim[: max(1, len(on_victim) // 2)])
        for n, uid in uidls.items():
            if uid in to_delete:
                p.ok(f"DELE {n}")
        r = p.quit()
        self.assertTrue(r.startswith(b"+OK"), r)
        remaining = sorted(set(holders) - to_delete)

        def listed(node: int) -> list[str]:
            return sorted(u for u, _, _ in harness.fetch_all(c.pop_port(node), user, pw))

        for j in survivors:
            self.assertEqual(listed(j), remaining, f"via node {j} right after the delete")

        c.restart_node(victim)
        faults.wait_view(c, range(NODES), 20, epoch_above=epoch_down)
        t_back = time.monotonic()

        def check(when: str) -> None:
            for j in range(NODES):
                got = listed(j)
                back = sorted(set(got) & to_delete)
                self.assertEqual(back, [], f"{when}: deleted messages listed again via node {j}\n{faults.log_excerpt(c)}")
                self.assertEqual(got, remaining, f"{when}: POP3 listing via node {j}")
                ids = sorted(faults.holders_by_id(faults.mailbox(c, j, user)))
                self.assertEqual(ids, remaining, f"{when}: /v1/mailboxes via node {j}")

        passes_back = {j: c.status(j)["repair"]["passes_total"] for j in range(NODES)}
        check("right after the rejoin")
        # Two more repair passes on every node: the second surely started after the rejoin.
        faults.wait_repair_passes(c, range(NODES), passes_back, 2, timeout_s=2 * REPAIR_INTERVAL_S + 20)
        faults.wait_view(c, range(NODES), 10)
        check(f"after a repair pass that began after the rejoin ({time.monotonic() - t_back:.0f} s)")

        # The repair pass wrote the tombstones to the returned node...
        st = c.status(victim)
        self.assertGreaterEqual(
            st["fragments"]["tombstones"], len(to_delete),
            f"returned node {victim} holds {st['fragments']} after a repair pass; "
            f"repair {faults.repair_sums(c, range(NODES))}",
        )
        box = faults.mailbox(c, victim, user)
        sums = faults.repair_sums(c, range(NODES))
        # Deleted stays deleted (and the rest stays complete) when yet another node fails.
        epoch_now = faults.wait_view(c, range(NODES), 10)
        c.kill_node(survivors[0])
        alive = [victim, survivors[1]]
        faults.wait_view(c, alive, 15, epoch_above=epoch_now)
        for j in alive:
            got = listed(j)
            self.assertEqual(sorted(set(got) & to_delete), [],
                             f"deleted messages back via node {j} once node {survivors[0]} is down")
            self.assertEqual(got, remaining, f"via node {j} with node {survivors[0]} down")
        # Nothing was short of copies at any point (a node down is not a lost copy), so
        # every remaining message still has exactly R holders, no more.
        wrong = {mid: h for mid, h in faults.holders_by_id(box).items() if len(set(h)) != REPLICAS}
        if wrong:
            self.fail(f"after the rejoin and a repair pass, {len(wrong)} of {len(remaining)} messages do not "
                      f"have exactly {REPLICAS} holders: {wrong}\nrepair figures then: {sums}\n"
                      f"{faults.log_excerpt(c)}")

    # --- 4 -----------------------------------------------------------------------------

    def test_4_node_remove_restores_two_copies(self):
        users = self.users("r", 6)
        c = self.start_cluster(users)
        for u_i, user in enumerate(users):
            for k in range(4):
                msg = harness.make_message(f"rm {u_i}/{k}", msgid=f"<rm-{u_i}-{k}@client.test>")
                self.deliver_retrying(c, c.smtp_port((u_i + k) % NODES), user, msg)
        before = {u: faults.holders_by_id(faults.mailbox(c, 0, u)) for u in users}
        for u, hs in before.items():
            self.assertEqual(len(hs), 4, f"{u}: {hs}")
            for mid, h in hs.items():
                self.assertEqual(len(set(h)), REPLICAS, f"{u} {mid}: {h}")
        counts = {i: sum(i in h for hs in before.values() for h in hs.values()) for i in (1, 2)}
        victim = max(counts, key=lambda i: (counts[i], i))
        survivors = [i for i in range(NODES) if i != victim]
        lost_copies = counts[victim]
        self.assertGreater(lost_copies, 0)

        # Removing a live node is refused with 409 (README).
        cp = harness.run_cli("node", "remove", str(victim), admin=c.admin_url(0), check=False)
        self.assertNotEqual(cp.returncode, 0, f"`node remove` of a live node succeeded: {cp.stdout}{cp.stderr}")
        self.assertIn("(HTTP 409)", cp.stdout + cp.stderr, "`node remove` of a live node must answer 409")

        epoch0 = faults.wait_view(c, range(NODES), 10)
        c.kill_node(victim)
        faults.wait_view(c, survivors, 15, epoch_above=epoch0)

        # Merely down: the shortfall is reported, and nothing is copied yet.
        deadline = time.monotonic() + 20
        while True:
            sums = faults.repair_sums(c, survivors)
            if sums["pending"] > 0 or sums["under_replicated"] > 0:
                break
            if time.monotonic() > deadline:
                self.fail(f"node {victim} down for 20 s but status shows no under-replicated or "
                          f"pending copies: {sums}\n{faults.log_excerpt(c)}")
            time.sleep(0.5)
        print(f"\n  node {victim} down: repair {sums}", end=" ")
        self.assertEqual(sums["copies_made_total"], 0, f"copies made while a node was merely down: {sums}")

        cp = harness.run_cli("node", "remove", str(victim), admin=c.admin_url(survivors[0]))
        t_removed = time.monotonic()

        def problems() -> dict:
            bad = {}
            for u in users:
                now = faults.holders_by_id(faults.mailbox(c, survivors[0], u))
                if sorted(now) != sorted(before[u]):
                    bad[u] = f"ids changed: {sorted(now)} vs {sorted(before[u])}"
                for mid, h in now.items():
                    if len(set(h)) != REPLICAS or victim in h:
                        bad[f"{u} {mid}"] = h
            return bad

        deadline = t_removed + 60
        while True:
            bad = problems()
            if not bad:
                break
            if time.monotonic() > deadline:
                self.fail(
                    f"60 s after `node remove {victim}` some messages lack {REPLICAS} copies off node {victim}: "
                    f"{dict(list(bad.items())[:10])}\nrepair {faults.repair_sums(c, survivors)}\n"
                    f"{faults.log_excerpt(c)}"
                )
            time.sleep(1.0)
        took = time.monotonic() - t_removed
        sums = faults.repair_sums(c, survivors)
        print(f"repaired {took:.1f} s after remove: {sums}", end=" ")
        self.assertEqual(sums["copies_made_total"], lost_copies,
                         f"{lost_copies} copies were lost with node {victim}; status says {sums}")
        # The other survivor agrees, and POP3 through both still shows everything.
        for u in users:
            self.assertEqual(faults.holders_by_id(faults.mailbox(c, survivors[1], u)),
                             faults.holders_by_id(faults.mailbox(c, survivors[0], u)))
        rec = faults.StormRecord(acked={f"<rm-{u_i}-{k}@client.test>": u for u_i, u in enumerate(users) for k in range(4)})
        self.assert_exact_everywhere(c, users, rec, survivors, "after node remove")

    # --- 5 -----------------------------------------------------------------------------

    def test_5_whole_cluster_crash(self):
        users = self.users("w", 6)
        c = self.start_cluster(users)
        storm = faults.Storm(c, list(users), [c.smtp_port(i) for i in range(NODES)], "crash", threads=3).start()
        try:
            self.assertGreaterEqual(storm.wait_acked(60, 30), 60, "deliveries never got going")
            faults.kill_all_nodes(c)
        finally:
            # No node is left to retry against: whatever is in flight is given up.
            rec = storm.stop(retry_budget_s=0)
        self.storm_report("whole-cluster crash", rec)
        self.assertEqual(rec.failures, [])
        c.stop()
        c.start()
        faults.wait_view(c, range(NODES), 30)
        for u, pw in users.items():
            c.wait_ready_for_pop(u, pw, 0)
        self.assert_exact_everywhere(c, users, rec, [0], "after a whole-cluster crash")


if __name__ == "__main__":
    unittest.main()
