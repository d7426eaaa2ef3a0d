"""The operator's view (issue 13): cluster-wide `status`, Prometheus exposition, logs
without ERROR, the CLI on a closed pipe, `up` on an existing data dir, node drain and
remove keeping mail and the registry."""

import json
import os
import re
import subprocess
import tempfile
import threading
import time
import unittest

import faults
import harness
from harness import DOMAIN

SHOTS = os.environ.get("PORCUPINE_SHOTS", "/work/briefs/shots")
# Messages sent before a drain (about half of them have a copy on the drained node).
PRE_MESSAGES = int(os.environ.get("PORCUPINE_DRAIN_MESSAGES", "2000"))


def error_lines(cluster: harness.Cluster, offsets: dict[str, int] | None = None) -> list[str]:
    """Every ERROR line in the node logs (after `offsets`, per log file)."""
    out = []
    for name in sorted(os.listdir(cluster.data)):
        if not re.fullmatch(r"node-\d+\.log", name):
            continue
        path = os.path.join(cluster.data, name)
        with open(path, "rb") as f:
            f.seek((offsets or {}).get(path, 0))
            for line in f.read().decode("utf-8", "replace").splitlines():
                if " ERROR " in line or line.startswith("ERROR"):
                    out.append(f"{name}: {line}")
    return out


def log_offsets(cluster: harness.Cluster) -> dict[str, int]:
    """The current size of every node log (to read only what comes after)."""
    out = {}
    for name in os.listdir(cluster.data):
        if re.fullmatch(r"node-\d+\.log", name):
            path = os.path.join(cluster.data, name)
            out[path] = os.path.getsize(path)
    return out


def all_logs(cluster: harness.Cluster) -> str:
    text = []
    for name in sorted(os.listdir(cluster.data)):
        if re.fullmatch(r"node-\d+\.log", name):
            with open(os.path.join(cluster.data, name), "rb") as f:
                text.append(f.read().decode("utf-8", "replace"))
    return "\n".join(text)


def add_users_retrying(cluster: harness.Cluster, users: list[tuple[str, str]], node: int = 0) -> None:
    cluster.add_users(users, node=node)


def metric_families(cluster: harness.Cluster, i: int):
    from prometheus_client.parser import text_string_to_metric_families

    status, text = harness.http_request(f"{cluster.admin_url(i)}/metrics", timeout=10)
    assert status == 200, (status, text)
    return text, {f.name: f for f in text_string_to_metric_families(text)}


def sample_sum(families, family: str, suffix: str = "", **labels) -> float:
    f = families.get(family)
    if f is None:
        return 0.0
    return sum(s.value for s in f.samples
               if s.name == family + suffix and all(s.labels.get(k) == v for k, v in labels.items()))


class ClusterOverviewTest(unittest.TestCase):
    """One healthy 3-node cluster: status from any node, metrics, logs, closed pipes."""

    cluster: harness.Cluster

    @classmethod
    def setUpClass(cls):
        cls.cluster = harness.Cluster(nodes=3).start()
        cls.addClassCleanup(cls.cluster.cleanup)
        c = cls.cluster
        faults.wait_view(c, [0, 1, 2], 30)
        cls.users = [(f"ops{i}@{DOMAIN}", f"pw{i}") for i in range(6)]
        # Account changes through every node: followers forward to the leader.
        for i, u in enumerate(cls.users):
            c.add_users([u], node=i % 3)
        c.wait_users_known([u for u, _ in cls.users])
        for u, pw in cls.users:
            c.wait_ready_for_pop(u, pw)

    def send(self, n: int, node: int = 0, tag: str = "m") -> list[str]:
        ids = []
        for k in range(n):
            user = self.users[k % len(self.users)][0]
            mid = f"<{tag}{k}.{time.monotonic_ns()}@ops.test>"
            r = harness.deliver(self.cluster.smtp_port(node), user, harness.make_message(f"s{k}", msgid=mid))
            self.assertEqual(r.code, 250, r)
            ids.append(mid)
        return ids

    def test_status_shows_the_whole_cluster_from_any_node(self):
        c = self.cluster
        self.send(6, node=1, tag="st")
        deadline = time.monotonic() + 20
        while True:
            per_node = {i: faults.admin_get(c, i, "/v1/cluster") for i in range(3)}
            st = c.status(2)
            own_sum = sum(per_node[i]["fragments"]["messages"] for i in range(3))
            if st["cluster"]["fragments"]["messages"] == own_sum and st["cluster"]["all_answered"]:
                break
            self.assertLess(time.monotonic(), deadline, f"sums never matched: {st['cluster']} vs {own_sum}")
            time.sleep(0.5)
        self.assertEqual(st["cluster"]["answered"], [0, 1, 2])
        # Each row carries that node's own figures, as it reported them.
        for row in st["nodes"]:
            self.assertTrue(row["answered"], row)
            self.assertIn("free_bytes", row["disk"])
            self.assertEqual(row["fragments"]["users"], per_node[row["id"]]["fragments"]["users"])
        self.assertEqual(sum(n["buckets"] for n in st["nodes"]), 65536)
        # Repair figures are summed over the cluster, not the asked node's.
        passes = sum(per_node[i]["repair"]["passes_total"] for i in range(3))
        self.assertGreaterEqual(st["cluster"]["repair"]["passes_total"], passes)
        self.assertEqual(st["cluster"]["traffic"]["smtp_messages_accepted"] >= 6, True, st["cluster"])
        # The table: no raw JSON, the registry in words, one row per node.
        out = harness.run_cli("status", admin=c.admin_url(1)).stdout
        self.assertNotIn("null", out)
        self.assertNotRegex(out, r"[\[\]{}]")
        self.assertRegex(out, r"(?m)^registry: leader: \d+  voters: 0, 1, 2  learners: none")
        self.assertRegex(out, r"(?m)^cluster:  view epoch \d+ \(coordinator \d+\), 3 of 3 known nodes live; asked node 1$")
        rows = [l.split() for l in out.splitlines() if re.match(r"^\s+\d+\s", l)]
        self.assertEqual([r[:2] for r in rows], [["0", "up"], ["1", "up"], ["2", "up"]], out)

    def test_cli_output_to_a_closed_pipe_exits_quietly(self):
        c = self.cluster
        for args in (("user", "list"), ("status",), ("status", "--json")):
            r, w = os.pipe()
            os.close(r)  # the reader is gone before the first line
            try:
                cp = subprocess.run([str(harness.BINARY), *args, "--admin", c.admin_url(0),
                                     *harness.cli_token_args(c.admin_url(0))],
                                    stdout=w, stderr=subprocess.PIPE, text=True, timeout=30)
            finally:
                os.close(w)
            self.assertEqual(cp.returncode, 0, f"{args}: {cp.stderr}")
            self.assertNotIn("panicked", cp.stderr)
            self.assertEqual(cp.stderr, "", args)
        # The shell pipeline of the issue.
        cp = subprocess.run(f"{harness.BINARY} user list --admin {c.admin_url(0)} "
                            f"{' '.join(harness.cli_token_args(c.admin_url(0)))} | head -2",
                            shell=True, capture_output=True, text=True, timeout=30)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertEqual(len(cp.stdout.splitlines()), 2, cp.stdout)
        self.assertNotIn("panicked", cp.stderr)

    def test_prometheus_exposition_types_help_and_moving_counters(self):
        c = self.cluster
        text, before = metric_families(c, 0)
        # Every family has a HELP text and a TYPE; `_total` series are counters.
        helped = set(re.findall(r"(?m)^# HELP (\S+) \S", text))
        typed = dict(re.findall(r"(?m)^# TYPE (\S+) (\S+)$", text))
        self.assertTrue(typed)
        self.assertEqual(sorted(set(typed) - helped), [], "series without # HELP")
        for name, kind in typed.items():
            if name.endswith("_total"):
                self.assertEqual(kind, "counter", name)
            if name.endswith("_seconds"):
                self.assertEqual(kind, "histogram", name)
        for f in before.values():
            self.assertTrue(f.documentation, f.name)
        # Send and retrieve mail, then the counters move.
        self.send(4, node=0, tag="pm")
        user, pw = self.users[0]
        msgs = harness.fetch_all(c.pop_port(0), user, pw)
        self.assertTrue(msgs)
        deadline = time.monotonic() + 10
        while True:
            text, after = metric_families(c, 0)
            if sample_sum(after, "porcupine_pop_messages_retrieved", "_total") >= len(msgs):
                break
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.3)
        for family in ("porcupine_smtp_messages", "porcupine_smtp_recipients", "porcupine_sessions",
                       "porcupine_rpc_calls", "porcupine_smtp_message_bytes", "porcupine_pop_commands",
                       "porcupine_view_changes", "porcupine_repair_passes"):
            self.assertEqual(after[family].type, "counter", family)
        self.assertGreaterEqual(
            sample_sum(after, "porcupine_smtp_messages", "_total", reply="250")
            - sample_sum(before, "porcupine_smtp_messages", "_total", reply="250"), 4)
        self.assertGreater(sample_sum(after, "porcupine_smtp_message_bytes", "_total"),
                           sample_sum(before, "porcupine_smtp_message_bytes", "_total"))
        self.assertGreater(sample_sum(after, "porcupine_sessions", "_total", protocol="smtp"),
                           sample_sum(before, "porcupine_sessions", "_total", protocol="smtp"))
        self.assertGreaterEqual(sample_sum(after, "porcupine_pop_commands", "_total", command="retr", outcome="ok"),
                                len(msgs))
        for family in ("porcupine_smtp_transaction_seconds", "porcupine_session_seconds",
                       "porcupine_pop_command_seconds", "porcupine_rpc_seconds",
                       "porcupine_storage_append_seconds"):
            self.assertEqual(after[family].type, "histogram", family)
            self.assertGreater(sample_sum(after, family, "_count"), 0, family)
        # Labels: reply code on SMTP, request kind and peer node on RPC, node on load.
        rpc = [s for s in after["porcupine_rpc_calls"].samples if s.name.endswith("_total")]
        self.assertTrue(any(s.labels.get("request") == "store" and s.labels.get("peer") in ("1", "2")
                            for s in rpc), rpc[:5])
        loads = {s.labels.get("node") for s in after["porcupine_node_load"].samples}
        self.assertEqual(loads, {"0", "1", "2"})

    def test_a_healthy_start_logs_no_error_and_account_changes_at_info(self):
        c = self.cluster
        self.assertEqual(error_lines(c), [])
        logs = all_logs(c)
        for u, _ in self.users:
            self.assertIn(f"address={u}", logs)
        self.assertRegex(logs, r"INFO.*account added")
        self.assertRegex(logs, r"INFO.*new view")

    def test_z_a_killed_node_rejoins_without_error_lines(self):
        # Last (by name): it takes node 2 down and back.
        c = self.cluster
        offsets = log_offsets(c)
        c.kill_node(2)
        faults.wait_view(c, [0, 1], 30)
        c.restart_node(2)
        faults.wait_view(c, [0, 1, 2], 40)
        c.add_users([(f"rejoin@{DOMAIN}", "pw")], node=2)
        c.wait_users_known([f"rejoin@{DOMAIN}"])
        self.assertEqual(error_lines(c, offsets), [])
        logs = all_logs(c)
        self.assertIn("address=rejoin@", logs)


class UpExistingDataTest(unittest.TestCase):
    """`up` on a data dir from an earlier `up --nodes 3`."""

    def test_up_starts_every_node_found_or_refuses_naming_them(self):
        top = tempfile.mkdtemp(prefix="porcupine-e2e-up-")
        data = os.path.join(top, "data")
        first = harness.Cluster(nodes=3, data=data).start()
        try:
            faults.wait_view(first, [0, 1, 2], 30)
            first.add_users([(f"keep@{DOMAIN}", "pw")])
            r = harness.deliver(first.smtp_port(0), f"keep@{DOMAIN}", harness.make_message("kept", msgid="<kept@ops.test>"))
            self.assertEqual(r.code, 250, r)
        finally:
            first.stop()
        base = first.base_port
        offsets = log_offsets(first)  # the logs are appended to: judge the rejoin alone
        # A count that differs from the directories is refused, naming them, and
        # nothing is started.
        cp = subprocess.run([str(harness.BINARY), "up", "--nodes", "1", "--base-port", str(base), "--data", data],
                            capture_output=True, text=True, timeout=30)
        self.assertNotEqual(cp.returncode, 0)
        for i in range(3):
            self.assertIn(os.path.join(data, f"node-{i}"), cp.stderr)
        self.assertIn("3-node", cp.stderr)
        # Without --nodes, `up` starts all three (harness.Cluster passes --nodes, so
        # run it by hand here).
        proc = subprocess.Popen([str(harness.BINARY), "up", "--base-port", str(base), "--data", data],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, text=True, bufsize=1)
        again = harness.Cluster(nodes=3, data=data, base_port=base)
        again.proc = proc
        harness._LIVE_PROCS.add(proc)
        ready = threading.Event()
        again._pump_thread = threading.Thread(target=again._pump, args=(proc, ready), daemon=True)
        again._pump_thread.start()
        try:
            self.assertTrue(ready.wait(90) and proc.poll() is None, again.output())
            self.assertIn("holds 3 node(s) from an earlier run; starting them all", again.output())
            again._parse_table()
            faults.wait_view(again, [0, 1, 2], 30)
            # Account changes work at once (the 3 voters are back), mail is kept.
            cp = harness.run_cli("user", "add", f"new@{DOMAIN}", "--password", "pw", admin=again.admin_url(1),
                                 timeout=30)
            self.assertIn("added", cp.stdout)
            again.wait_ready_for_pop(f"keep@{DOMAIN}", "pw")
            got = faults.read_mailboxes(again, 2, {f"keep@{DOMAIN}": "pw"})
            self.assertEqual([m for _, m in got[f"keep@{DOMAIN}"]], ["<kept@ops.test>"])
            # A rejoin logs no ERROR either.
            self.assertEqual(error_lines(again, offsets), [])
        finally:
            again.cleanup()
            import shutil
            shutil.rmtree(top, ignore_errors=True)


class DrainTest(unittest.TestCase):
    """Drain a node under mail, then stop and remove it: nothing acknowledged is lost,
    and the registry stays writable (a learner takes the removed voter's seat)."""

    def test_drain_then_remove_keeps_mail_and_the_registry(self):
        c = harness.Cluster(nodes=4).start()
        self.addCleanup(c.cleanup)
        faults.wait_view(c, [0, 1, 2, 3], 40)
        users = {f"dr{i}@{DOMAIN}": f"pw{i}" for i in range(8)}
        c.add_users(list(users.items()))
        c.wait_users_known(list(users))
        for u, pw in users.items():
            c.wait_ready_for_pop(u, pw)
        deadline = time.monotonic() + 30
        while True:
            st = c.status(0)
            if len(st["registry"]["voters"]) == 3 and len(st["registry"]["learners"]) == 1:
                break
            self.assertLess(time.monotonic(), deadline, st["registry"])
            time.sleep(0.5)
        # The victim is a registry voter (not node 0, which the CLI asks), so its
        # removal must hand its seat to the learner.
        voters = sorted(st["registry"]["voters"])
        learner = st["registry"]["learners"][0]
        victim = max(v for v in voters if v != 0)
        others = [i for i in range(4) if i != victim]
        voters_after = sorted([v for v in voters if v != victim] + [learner])
        acked: dict[str, str] = {}
        maybe: dict[str, str] = {}
        lock = threading.Lock()
        stop = threading.Event()

        def sender(tag: str, count: int | None):
            k = 0
            while (count is None and not stop.is_set()) or (count is not None and k < count):
                user = list(users)[k % len(users)]
                mid = f"<{tag}{k}@drain.test>"
                node = others[k % 3]
                try:
                    r = harness.deliver(c.smtp_port(node), user, harness.make_message(tag, msgid=mid))
                    with lock:
                        (acked if r.code == 250 else maybe)[mid] = user
                except (OSError, ConnectionError, ValueError):
                    with lock:
                        maybe[mid] = user
                k += 1

        # Mail the drain has to move (4 senders at once, to have enough for a timeline).
        pre = [threading.Thread(target=sender, args=(f"pre{t}-", PRE_MESSAGES // 4)) for t in range(4)]
        for t in pre:
            t.start()
        for t in pre:
            t.join(300)
        # Old enough for repair (it leaves messages younger than 15 s alone).
        time.sleep(16)
        held_before = faults.admin_get(c, victim, "/v1/cluster")["fragments"]["messages"]
        self.assertGreater(held_before, 0)
        t0 = time.monotonic()
        cp = harness.run_cli("node", "drain", str(victim), admin=c.admin_url(0))
        self.assertIn(f"node {victim} draining", cp.stdout)
        # Every live node has the mark once the command returns: mail from now on
        # must go elsewhere.
        background = threading.Thread(target=sender, args=("during", None), daemon=True)
        background.start()
        timeline = []
        done = None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            st = c.status(0)
            d = [x for x in st["cluster"]["drain"] if x["id"] == victim]
            moved = st["cluster"]["repair"]["drain_copies_total"]
            timeline.append((round(time.monotonic() - t0, 1), moved, d[0]["pending"] if d else None))
            if d and d[0]["holds_nothing_needed"]:
                done = time.monotonic() - t0
                break
            time.sleep(0.25)
        stop.set()
        background.join(60)
        self.assertIsNotNone(done, f"drain never finished: {timeline[-5:]}")
        row = [n for n in st["nodes"] if n["id"] == victim][0]
        self.assertTrue(row["draining"], row)
        out = harness.run_cli("status", admin=c.admin_url(1)).stdout
        self.assertRegex(out, rf"(?m)^drain:    node {victim}: holds nothing needed")
        self.assertRegex(out, rf"(?m)^\s+{victim}\s+draining\s")
        # New mail since the drain went elsewhere, and no repair copy either: the
        # victim holds exactly what it held.
        self.assertEqual(faults.admin_get(c, victim, "/v1/cluster")["fragments"]["messages"], held_before)
        with lock:
            self.assertGreater(len([m for m in acked if m.startswith("<during")]), 0)
        # Timeline for the closing note: copies moved per second.
        os.makedirs(SHOTS, exist_ok=True)
        with open(os.path.join(SHOTS, "drain_timeline.txt"), "w") as f:
            f.write(f"# node {victim} of 4 (a registry voter) drained under mail; {held_before} copies on it at the start; "
                    f"done after {done:.1f} s\n# t_s moved_total pending\n")
            prev = (0.0, 0)
            for t, moved, pending in timeline:
                rate = (moved - prev[1]) / max(t - prev[0], 0.1) if t > prev[0] else 0.0
                f.write(f"{t:6.1f} {moved:6d} {pending!s:>6} {rate:7.1f}/s\n")
                prev = (t, moved)
        print(f"\ndrain timeline (t, moved, pending): {timeline}", flush=True)
        # Stop it (kill -9: the worst case) and remove it.
        c.kill_node(victim)
        faults.wait_view(c, others, 40, maps_complete=True)
        cp = harness.run_cli("node", "remove", str(victim), admin=c.admin_url(0))
        self.assertIn(f"node {victim} removed", cp.stdout)
        deadline = time.monotonic() + 30
        while True:
            st = c.status(1)
            if sorted(st["registry"]["voters"]) == voters_after and st["registry"]["learners"] == []:
                break
            self.assertLess(time.monotonic(), deadline, f"learner {learner} never took the seat: {st['registry']}")
            time.sleep(0.5)
        out = harness.run_cli("status", admin=c.admin_url(learner)).stdout
        self.assertRegex(out, rf"(?m)^registry: leader: \d+  voters: {', '.join(map(str, voters_after))}  learners: none")
        # The registry is writable, also from the promoted node.
        cp = harness.run_cli("user", "add", f"after@{DOMAIN}", "--password", "pw", admin=c.admin_url(learner), timeout=30)
        self.assertIn("added", cp.stdout)
        # Every acknowledged message is still there, with no further repair needed.
        for u, pw in users.items():
            c.wait_ready_for_pop(u, pw, i=0, timeout_s=30)
        seen = faults.read_mailboxes(c, 0, users)
        problems = faults.compare(seen, acked, maybe)
        self.assertEqual(problems, {}, faults.shorten(problems))
        self.assertGreater(len(acked), PRE_MESSAGES)


if __name__ == "__main__":
    unittest.main()
