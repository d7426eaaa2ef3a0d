"""README promises about `porcupine up` clusters that no other test exercises:
`--replicas` with R=1's documented behaviour, the admin API's error statuses and
bodies (400/404/409/503), `451 4.3.0` and `-ERR [SYS/TEMP]` while a node fails, and
tombstone collection (`--tombstone-min-age-secs`, `tombstones_collected_total`).

Each class starts its own cluster (they kill nodes); every wait is on an observable
condition with a bound, and only refusals the README allows (4xx, `[SYS/TEMP]`,
`[IN-USE]`, registry 503 while adding users) are ever retried.
"""

from __future__ import annotations

import os
import re
import sys
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (DOMAIN, Cluster, PopError, PopRaw, SmtpRaw, header_value, http_get_json,
                     http_request, make_message, pop_session, run_cli)

SENDER = "sender@elsewhere.test"


def wait_for(what: str, cond, timeout_s: float, interval_s: float = 0.1, detail=lambda: ""):
    """Poll cond() until it returns a truthy value (returned); AssertionError after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; {detail()}")
        time.sleep(interval_s)


def add_users(c: Cluster, users: list[str], password: str, node: int = 0) -> None:
    """POST /v1/users for each; retries only 503 (registry settling), bounded."""
    for u in users:
        deadline = time.monotonic() + 20
        while True:
            status, body = http_request(f"{c.admin_url(node)}/v1/users", "POST",
                                        {"address": u, "password": password})
            if status == 201:
                break
            if status != 503 or time.monotonic() > deadline:
                raise AssertionError(f"adding {u}: HTTP {status} {body!r}")
            time.sleep(0.2)


def cluster_status(c: Cluster, i: int) -> dict:
    return http_get_json(f"{c.admin_url(i)}/v1/cluster", timeout=10)


def mailbox(c: Cluster, i: int, user: str) -> dict:
    return http_get_json(f"{c.admin_url(i)}/v1/mailboxes/{user}", timeout=10)


def view_settled(c: Cluster, i: int, live: set[int]):
    """Node i's status if its view's live set is exactly `live` and its maps are complete."""
    try:
        s = cluster_status(c, i)
    except (OSError, AssertionError):
        return None
    return s if set(s["live"]) == live and s["maps_complete"] else None


def pop_login_retrying(port: int, user: str, password: str, timeout_s: float = 30) -> PopRaw:
    """Log in; `[SYS/TEMP]` and `[IN-USE]` (allowed during reconfiguration) are retried."""
    return pop_session(port, user, password, timeout_s=timeout_s)


def pop_uidls(port: int, user: str, password: str) -> dict[str, bytes]:
    """uid -> RETR bytes of the whole mailbox (login retried as allowed), ending with QUIT."""
    p = pop_login_retrying(port, user, password)
    try:
        uids = p.uidls()
        out = {uids[n]: p.retr(n) for n in sorted(uids)}
        self_quit = p.quit()
        if not self_quit.startswith(b"+OK"):
            raise AssertionError(f"QUIT: {self_quit!r}")
        return out
    finally:
        p.close()


def deliver_one(port: int, user: str, subject: str) -> tuple[int, str]:
    with SmtpRaw(port) as s:
        r = s.send_mail(SENDER, [user], make_message(subject))
        s.cmd("QUIT")
        return r.code, r.text


class ReplicasOne(unittest.TestCase):
    """`up --replicas 1`: one copy per message; while its node is down the message is
    missing from listings (not refused, not lost) and it is back when the node returns."""

    def setUp(self):
        self.c = Cluster(3, up_args=("--replicas", "1")).start()

    def tearDown(self):
        self.c.cleanup()

    def test_replicas_one(self):
        c = self.c
        for i in range(3):
            cmd = c.info[i].command or []
            self.assertIn("--replicas", cmd, f"node {i}'s command line: {cmd}")
            self.assertEqual(cmd[cmd.index("--replicas") + 1], "1", f"node {i}'s command line: {cmd}")
        users = [f"r1-{k}-{uuid.uuid4().hex[:6]}@{DOMAIN}" for k in range(6)]
        add_users(c, users, "pw")
        holders: dict[str, dict[str, int]] = {}
        for u in users:
            for k in range(4):
                code, text = deliver_one(c.smtp_port(k % 3), u, f"{u} #{k}")
                self.assertEqual(code, 250, text)
            box = mailbox(c, 0, u)
            self.assertEqual(len(box["messages"]), 4, box)
            for m in box["messages"]:
                self.assertEqual(len(m["holders"]), 1, f"R=1 must store exactly one copy: {m}")
            holders[u] = {m["id"]: m["holders"][0] for m in box["messages"]}
        total = sum(cluster_status(c, i)["fragments"]["messages"] for i in range(3))
        self.assertEqual(total, 4 * len(users), "fragment counts over all nodes")
        # A victim that holds some of one user's mail, a front end that is not the victim.
        user, victim = next(((u, n) for u, h in holders.items() for n in set(h.values())
                             if len(set(h.values())) > 1), (users[0], next(iter(holders[users[0]].values()))))
        front = (victim + 1) % 3
        expected_all = set(holders[user])
        on_victim = {i for i, n in holders[user].items() if n == victim}
        self.assertTrue(on_victim)
        c.kill_node(victim)
        live = {0, 1, 2} - {victim}
        wait_for(f"node {front}'s view without node {victim}", lambda: view_settled(c, front, live), 30)
        seen = pop_uidls(c.pop_port(front), user, "pw")
        self.assertEqual(set(seen), expected_all - on_victim,
                         "with R=1 exactly the failed node's messages are missing from the listing")
        c.restart_node(victim)
        wait_for(f"node {front}'s view with node {victim} back", lambda: view_settled(c, front, {0, 1, 2}), 60,
                 detail=c.logs)
        seen = pop_uidls(c.pop_port(front), user, "pw")
        self.assertEqual(set(seen), expected_all, "the failed node's messages must be back once it returns")


class AdminErrors(unittest.TestCase):
    """Every admin error status named in the README, each with an `{"error": "..."}` body,
    and `503` from `POST /v1/users` once the registry has no quorum."""

    def setUp(self):
        self.c = Cluster(3).start()

    def tearDown(self):
        self.c.cleanup()

    def assert_error(self, method: str, path: str, body, want: int):
        status, answer = http_request(f"{self.c.admin_url(0)}{path}", method, body)
        self.assertEqual(status, want, f"{method} {path}: {answer!r}")
        self.assertIsInstance(answer, dict, f"{method} {path}: body is not JSON: {answer!r}")
        self.assertEqual(set(answer), {"error"}, f"{method} {path}: {answer!r}")
        self.assertIsInstance(answer["error"], str)
        self.assertTrue(answer["error"], f"{method} {path}: empty error text")
        return answer["error"]

    def test_admin_error_statuses(self):
        c = self.c
        user = f"adm-{uuid.uuid4().hex[:6]}@{DOMAIN}"
        add_users(c, [user], "pw")
        self.assert_error("POST", "/v1/nodes/99/remove", None, 404)
        self.assert_error("POST", "/v1/nodes/1/remove", None, 409)
        self.assert_error("POST", "/v1/nodes/one/remove", None, 400)
        self.assert_error("POST", "/v1/users", {"address": user, "password": "x"}, 409)
        self.assert_error("POST", "/v1/users", {"address": "no-at-sign", "password": "x"}, 400)
        self.assert_error("POST", "/v1/users", b"{not json", 400)
        self.assert_error("DELETE", f"/v1/users/nobody@{DOMAIN}", None, 404)
        self.assert_error("PUT", f"/v1/users/nobody@{DOMAIN}/password", {"password": "x"}, 404)
        self.assert_error("GET", "/v1/nothing-here", None, 404)
        self.assertEqual(http_request(f"{c.admin_url(0)}/v1/nodes/1/remove", "POST")[0], 409,
                         "the live node must still be there")

        # Two of three nodes gone: no registry quorum, so a write must answer 503.
        for i in (1, 2):
            c.kill_node(i)
        text = self.assert_error("POST", "/v1/users", {"address": f"late@{DOMAIN}", "password": "pw"}, 503)
        # The CLI passes the status on.
        cp = run_cli("user", "add", f"late2@{DOMAIN}", "--password", "pw", admin=c.admin_url(0), check=False)
        self.assertNotEqual(cp.returncode, 0, cp.stdout)
        self.assertIn("(HTTP 503)", cp.stderr)
        self.assertTrue(text)


class Failover(unittest.TestCase):
    """One of three nodes stops answering (SIGSTOP: the kernel still takes its
    connections, nothing answers them): until the view drops it, a delivery that needs
    it answers `451 4.3.0` and a login whose mailbox has fragments on it answers
    `-ERR [SYS/TEMP]`; never a 5xx, never a 250 that is then lost or shown twice; after
    the view change both work again.

    Why not kill -9: a dead node's refused connections make the failure detector drop
    it within a few hundred ms, and on a loaded machine that window can close before
    the login's password check ends, so the test would sometimes see the (correct)
    answers of the new view. A silent node is the slow case: calls to it wait out
    `rpc_timeout_ms` (3 s) while the detector needs `suspect_after_ms` (2 s) plus a
    last ping, so requests sent at once all meet the failover."""

    USERS = 24

    def setUp(self):
        self.c = Cluster(3).start()
        self.paused: int | None = None

    def tearDown(self):
        # A stopped node cannot act on `up`'s SIGTERM: continue it first.
        if self.paused is not None and self.c.node_running(self.paused):
            self.c.resume_node(self.paused)
        self.c.cleanup()

    def test_451_and_sys_temp_during_failover(self):
        c = self.c
        users = [f"fo-{k:02d}-{uuid.uuid4().hex[:6]}@{DOMAIN}" for k in range(self.USERS)]
        add_users(c, users, "pw")
        acked: dict[str, list[str]] = {u: [] for u in users}  # user -> subjects answered 250
        for u in users:
            for k in range(2):
                subject = f"before {k} {u}"
                code, text = deliver_one(c.smtp_port(0), u, subject)
                self.assertEqual(code, 250, text)
                acked[u].append(subject)
        leader = cluster_status(c, 0)["registry"]["leader"]
        victim = next(i for i in (2, 1) if i != leader)
        boxes = {u: mailbox(c, 0, u) for u in users}
        pop_user = next((u for u, b in boxes.items() if victim in b["mail_map"] and b["manager"] != victim), None)
        self.assertIsNotNone(pop_user, f"no user with fragments on node {victim} and a live manager: {boxes}")
        # Deliver first to users whose manager survives (their placement answers at once).
        order = sorted(users, key=lambda u: boxes[u]["manager"] == victim)
        epoch = cluster_status(c, 0)["epoch"]

        # Every byte that can be sent before the victim stops is, and everything after
        # leaves in one write per connection: the POP3 PASS, and all SMTP transactions
        # pipelined with BDAT ... LAST (CHUNKING needs no 354 round trip).
        p = PopRaw(c.pop_port(0))
        s = SmtpRaw(c.smtp_port(0))
        try:
            p.ok(f"USER {pop_user}")
            ehlo = s.cmd("EHLO client.test")
            self.assertEqual(ehlo.code, 250)
            self.assertIn("CHUNKING", ehlo.text)
            batch = b""
            for u in order:
                body = make_message(f"during {u}")
                batch += (f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{u}>\r\nBDAT {len(body)} LAST\r\n".encode()
                          + body)
            c.pause_node(victim)
            self.paused = victim
            killed = time.monotonic()
            p.sock.sendall(b"PASS pw\r\n")
            s.send(batch)
            login = p._line()
            replies: list[tuple[str, str, int, str, float]] = []
            for u in order:
                mail, rcpt, final = s.reply(), s.reply(), s.reply()
                at = round(time.monotonic() - killed, 3)
                self.assertEqual((mail.code, rcpt.code), (250, 250), f"envelope for {u}: {mail!r} {rcpt!r}")
                replies.append((u, f"during {u}", final.code, final.text, at))
                if final.code == 250:
                    acked[u].append(f"during {u}")
            s.cmd("QUIT")
            p.cmd("QUIT")
        finally:
            s.close()
            p.close()
        epoch_after = cluster_status(c, 0)["epoch"]

        bad = [r for r in replies if r[2] >= 500 or r[2] not in (250, 451)]
        self.assertFalse(bad, f"a delivery during failover must be 250 or 451, never 5xx: {bad}")
        for u, subject, code, text, _ in replies:
            if code == 451:
                self.assertTrue(text.startswith("4.3.0 "), f"451 without 4.3.0: {text!r}")
        temp = [r for r in replies if r[2] == 451]
        window = f"(epoch before the stop {epoch}, after the window {epoch_after})"
        self.assertTrue(temp, f"no delivery answered 451 4.3.0 while node {victim} was silent but in the view "
                              f"{window}: {[(r[2], f'read {r[4]} s after the stop') for r in replies]}")
        self.assertEqual(login, b"-ERR [SYS/TEMP] maildrop temporarily unavailable",
                         f"login of {pop_user} (fragments on node {victim}) before the view change {window}")

        # The survivors agree on a view without the victim; then everything works.
        wait_for("node 0's view without the victim", lambda: view_settled(c, 0, {0, 1, 2} - {victim}), 30)
        for u, subject, _, _, _ in temp:
            deadline = time.monotonic() + 20
            while True:
                code, text = deliver_one(c.smtp_port(0), u, subject)
                if code == 250:
                    acked[u].append(subject)
                    break
                self.assertEqual(code, 451, f"retrying {subject!r}: {code} {text}")
                self.assertLess(time.monotonic(), deadline, f"still 451 after the view change: {text}")
                time.sleep(0.2)
        for u in users:
            got = pop_uidls(c.pop_port(0), u, "pw")
            subjects = sorted(header_value(m, "Subject") for m in got.values())
            self.assertEqual(subjects, sorted(acked[u]),
                             f"{u}: every message answered 250 exactly once, nothing else")


class TombstoneCollection(unittest.TestCase):
    """Deletes leave tombstones; once no copy is left and the message is older than
    `--tombstone-min-age-secs`, repair collects them, `tombstones_collected_total` (status
    and /metrics) moves, and the deleted messages never come back."""

    MIN_AGE_S = 4
    REPAIR_INTERVAL_S = 1

    def setUp(self):
        self.c = Cluster(2, up_args=("--tombstone-min-age-secs", str(self.MIN_AGE_S),
                                     "--repair-interval-secs", str(self.REPAIR_INTERVAL_S))).start()

    def tearDown(self):
        self.c.cleanup()

    def figures(self) -> list[dict]:
        return [cluster_status(self.c, i) for i in range(2)]

    def test_tombstones_collected(self):
        c = self.c
        for i in range(2):
            cmd = c.info[i].command or []
            self.assertIn("--tombstone-min-age-secs", cmd, cmd)
        user = f"ts-{uuid.uuid4().hex[:6]}@{DOMAIN}"
        add_users(c, [user], "pw")
        for k in range(3):
            code, text = deliver_one(c.smtp_port(k % 2), user, f"m{k}")
            self.assertEqual(code, 250, text)
        before = sum(f["repair"]["tombstones_collected_total"] for f in self.figures())
        self.assertEqual(before, 0)
        p = pop_login_retrying(c.pop_port(0), user, "pw")
        try:
            uids = p.uidls()
            self.assertEqual(len(uids), 3)
            subjects = {n: header_value(p.retr(n), "Subject") for n in uids}
            gone = {uids[n] for n in uids if subjects[n] != "m1"}
            kept = {uids[n] for n in uids if subjects[n] == "m1"}
            for n in uids:
                if subjects[n] != "m1":
                    p.ok(f"DELE {n}")
            self.assertTrue(p.quit().startswith(b"+OK"))
        finally:
            p.close()
        tombstones_now = sum(f["fragments"]["tombstones"] for f in self.figures())
        self.assertGreaterEqual(tombstones_now, 2, "QUIT must leave tombstones on the holders")

        def collected():
            fs = self.figures()
            n = sum(f["repair"]["tombstones_collected_total"] for f in fs)
            left = sum(f["fragments"]["tombstones"] for f in fs)
            return fs if n >= len(gone) and left == 0 else None

        figures = wait_for(f"tombstones_collected_total to reach {len(gone)} and no tombstone left on any node", collected, self.MIN_AGE_S + 30, 0.2,
                           detail=lambda: f"{self.figures()}\n{c.logs()}")
        self.assertEqual(sum(f["repair"]["tombstones_collected_total"] for f in figures), len(gone),
                         "each collected tombstone counted once")
        metric = 0.0
        for i in range(2):
            status, text = http_request(f"{c.admin_url(i)}/metrics")
            self.assertEqual(status, 200)
            m = re.search(r"^porcupine_tombstones_collected_total (\S+)$", text, re.M)
            self.assertIsNotNone(m, f"no porcupine_tombstones_collected_total in /metrics of node {i}")
            metric += float(m.group(1))
            # Every live node's load, as this node's load table has it.
            loads = set(re.findall(r'^porcupine_node_load\{node="(\d+)"\} \S+$', text, re.M))
            self.assertEqual(loads, {"0", "1"}, f"porcupine_node_load per node in /metrics of node {i}")
        self.assertEqual(metric, len(gone), "/metrics must agree with status")

        def listing_is_kept():
            got = pop_uidls(c.pop_port(1), user, "pw")
            self.assertEqual(set(got), kept, "a deleted message came back after its tombstone was collected")
            return True

        listing_is_kept()
        # More repair passes after the collection (on every node) change nothing.
        passes = [f["repair"]["passes_total"] for f in figures]
        wait_for("two more repair passes on every node",
                 lambda: all(f["repair"]["passes_total"] >= p + 2 for f, p in zip(self.figures(), passes)),
                 10 * self.REPAIR_INTERVAL_S + 10)
        listing_is_kept()
        box = mailbox(c, 0, user)
        self.assertEqual({m["id"] for m in box["messages"]}, kept)
        self.assertEqual(box["tombstones"], 0)


if __name__ == "__main__":
    unittest.main()
