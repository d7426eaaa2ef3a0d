"""Fault-injection helpers for the replication tests: a sender storm that behaves like
a real MTA (retry on 4xx, remember what was acknowledged), pausing and killing node
processes, waiting for a view, reading the admin API, and an exact mailbox check.

Only 127.0.0.1 is contacted, and only pids printed by a `porcupine up` this process
started (or nodes it re-ran itself) are ever signalled, always by pid.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import harness

ADMIN_TIMEOUT_S = 3.0


# --- admin API --------------------------------------------------------------------------


def admin_get(cluster: harness.Cluster, node: int, path: str, timeout_s: float = ADMIN_TIMEOUT_S) -> dict:
    """GET an admin path on node `node` (no proxy) and decode the JSON body; AssertionError
    on any status but 200, with the body."""
    return harness.http_get_json(cluster.admin_url(node) + path, timeout=timeout_s)


def mailbox(cluster: harness.Cluster, node: int, user: str) -> dict:
    """`GET /v1/mailboxes/{user}` through node `node`."""
    return admin_get(cluster, node, f"/v1/mailboxes/{user}", timeout_s=10)


def holders_by_id(box: dict) -> dict[str, list[int]]:
    """{message id: sorted holder node ids} from a /v1/mailboxes answer."""
    return {m["id"]: sorted(m["holders"]) for m in box["messages"]}


def wait_users_known(cluster: harness.Cluster, nodes, users: list[str], timeout_s: float = 20) -> None:
    """Wait until every listed node's registry replica has every account."""
    cluster.wait_users_known(users, nodes=nodes, timeout_s=timeout_s)


def view_summary(cluster: harness.Cluster, nodes) -> dict:
    """{node: (epoch, live, maps_complete)} or {node: error text}, for failure messages."""
    out = {}
    for i in nodes:
        try:
            s = admin_get(cluster, i, "/v1/cluster")
            out[i] = (s["epoch"], sorted(s["live"]), s.get("maps_complete"))
        except (OSError, AssertionError, ValueError) as e:
            out[i] = repr(e)[:120]
    return out


def wait_view(cluster: harness.Cluster, nodes, timeout_s: float, epoch_above=None,
              maps_complete: bool = True) -> dict:
    """Wait until every node in `nodes` reports the same epoch, exactly `nodes` live,
    (optionally) complete mail maps, and an epoch other than `epoch_above`.

    Returns the epoch object; raises AssertionError with what each node said."""
    nodes = sorted(nodes)
    deadline = time.monotonic() + timeout_s
    while True:
        seen = {}
        ok = True
        for i in nodes:
            try:
                seen[i] = admin_get(cluster, i, "/v1/cluster")
            except (OSError, AssertionError, ValueError):
                ok = False
                break
        if ok:
            epochs = [json.dumps(s["epoch"], sort_keys=True) for s in seen.values()]
            ok = (
                len(set(epochs)) == 1
                and all(sorted(s["live"]) == nodes for s in seen.values())
                and (not maps_complete or all(s.get("maps_complete") for s in seen.values()))
                and (epoch_above is None or json.loads(epochs[0]) != epoch_above)
            )
            if ok:
                return json.loads(epochs[0])
        if time.monotonic() > deadline:
            raise AssertionError(
                f"nodes {nodes} did not settle on one view with live={nodes} within {timeout_s} s: "
                f"{view_summary(cluster, range(cluster.nodes))}"
            )
        time.sleep(0.2)


def repair_sums(cluster: harness.Cluster, nodes) -> dict[str, int]:
    """Sum of each `repair` figure of `porcupine status --json` over `nodes`."""
    total: dict[str, int] = {}
    for i in nodes:
        for k, v in cluster.status(i)["repair"].items():
            total[k] = total.get(k, 0) + int(v)
    return total


def wait_repair_passes(cluster: harness.Cluster, nodes, since: dict[int, int], more: int, timeout_s: float) -> None:
    """Wait until every listed node's `repair.passes_total` is at least `more` above `since`."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = {i: cluster.status(i)["repair"]["passes_total"] for i in nodes}
        if all(now[i] >= since[i] + more for i in nodes):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"repair passes did not advance by {more} in {timeout_s} s: {since} -> {now}")
        time.sleep(0.5)


# --- processes --------------------------------------------------------------------------


def pause_node(cluster: harness.Cluster, i: int) -> int:
    """SIGSTOP node i (its pid only); returns the pid for resume_node."""
    pid = cluster.info[i].pid
    os.kill(pid, signal.SIGSTOP)
    return pid


def resume_pid(pid: int) -> None:
    """SIGCONT a pid paused by pause_node; a pid that is gone is fine."""
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


def kill_all_nodes(cluster: harness.Cluster) -> None:
    """kill -9 every node pid `up` printed, back to back, then wait until all are gone."""
    pids = [cluster.info[i].pid for i in sorted(cluster.info)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    for pid in pids:
        while time.monotonic() < deadline and harness._pid_running(pid):
            time.sleep(0.05)


# Warnings and errors of our own crates (openraft's retry chatter while a node is down
# would drown them), views, repair passes and panics.
LOG_PATTERN = r"(WARN|ERROR) (?!openraft)|new view|repair pass|store opened|panick"


def log_excerpt(cluster: harness.Cluster, pattern: str = LOG_PATTERN, lines_max: int = 25) -> str:
    """The last matching lines of every node log (see LOG_PATTERN)."""
    rx = re.compile(pattern)
    out = []
    for i in sorted(cluster.info):
        path = os.path.join(cluster.data, f"node-{i}.log")
        try:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8", "replace").splitlines()
        except OSError as e:
            text = [f"<cannot read: {e}>"]
        hits = [re.sub(r"\x1b\[[0-9;]*m", "", l) for l in text if rx.search(l)]
        out.append(f"== node-{i}.log: {len(hits)} matching lines, last {lines_max} ==")
        out.extend(l[:300] for l in hits[-lines_max:])
    return "\n".join(out)


# --- a sender storm ---------------------------------------------------------------------


@dataclass
class StormRecord:
    """What the senders learned. Every field is guarded by Storm.lock."""

    acked: dict[str, str] = field(default_factory=dict)  # Message-ID -> user, got 250
    # Message-IDs whose final dot was sent but whose answer never came (connection
    # lost): the server may or may not have stored them, so each may appear at most once.
    uncertain: dict[str, str] = field(default_factory=dict)
    # Message-IDs that only ever got 4xx (or no connection) and were given up: the
    # server promised nothing, so they must not appear.
    abandoned: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # 5xx answers: never allowed here
    temp_replies: dict[str, int] = field(default_factory=dict)  # "451 4.3.0 ..." -> count
    ack_times: list[float] = field(default_factory=list)  # monotonic time of each 250


class Storm:
    """Sender threads, each sending one logical message at a time to rotating SMTP
    ports, with a unique Message-ID and Subject per message.

    A 4xx answer (or a refused / dropped connection before the final dot) is retried
    with the same Message-ID after a pause, through the next port, as a real MTA with
    several MX hosts would. A connection lost after the final dot leaves the outcome
    unknown: that id is recorded as uncertain and the sender moves on with a new id."""

    def __init__(self, cluster: harness.Cluster, users: list[str], ports: list[int], tag: str,
                 threads: int = 3, sock_timeout_s: float = 25, pause_s: float = 0.01):
        self.cluster = cluster
        self.users = users
        self.ports = ports
        self.tag = tag
        self.sock_timeout_s = sock_timeout_s
        self.pause_s = pause_s
        self.lock = threading.Lock()
        self.rec = StormRecord()
        self._stop = threading.Event()
        self._give_up_at: float | None = None
        self._threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(threads)]

    def start(self) -> "Storm":
        """Start every sender thread."""
        for t in self._threads:
            t.start()
        return self

    def acked_count(self) -> int:
        """How many messages got 250 so far."""
        with self.lock:
            return len(self.rec.acked)

    def wait_acked(self, n: int, timeout_s: float) -> int:
        """Wait until at least n messages got 250; returns the count reached."""
        deadline = time.monotonic() + timeout_s
        while self.acked_count() < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.acked_count()

    def stop(self, retry_budget_s: float, join_s: float = 60) -> StormRecord:
        """Stop starting new messages; keep retrying the ones in flight for
        retry_budget_s, then give them up. Returns a copy of the record."""
        self._give_up_at = time.monotonic() + retry_budget_s
        self._stop.set()
        for t in self._threads:
            t.join(join_s)
        alive = [t for t in self._threads if t.is_alive()]
        if alive:
            raise AssertionError(f"{len(alive)} sender threads still blocked after {join_s} s")
        with self.lock:
            r = self.rec
            return StormRecord(dict(r.acked), dict(r.uncertain), dict(r.abandoned), list(r.failures),
                               dict(r.temp_replies), list(r.ack_times))

    def _run(self, k: int) -> None:
        seq = 0
        while not self._stop.is_set():
            seq += 1
            user = self.users[(5 * k + seq) % len(self.users)]
            mid = f"<{self.tag}-{k}-{seq}@client.test>"
            msg = harness.make_message(f"{self.tag} {k}/{seq}", body=f"storm message {k}/{seq}\r\n", msgid=mid)
            attempt = 0
            while True:
                port = self.ports[(k + seq + attempt) % len(self.ports)]
                attempt += 1
                outcome, detail = self._try(port, user, msg)
                if outcome == "acked":
                    with self.lock:
                        self.rec.acked[mid] = user
                        self.rec.ack_times.append(time.monotonic())
                    break
                if outcome == "uncertain":
                    with self.lock:
                        self.rec.uncertain[mid] = user
                    break
                if outcome == "failed":
                    with self.lock:
                        self.rec.failures.append(f"{mid} via port {port}: {detail}")
                    break
                # "retry": nothing was promised; the same message goes again later.
                with self.lock:
                    self.rec.temp_replies[detail] = self.rec.temp_replies.get(detail, 0) + 1
                if self._give_up_at is not None and time.monotonic() > self._give_up_at:
                    with self.lock:
                        self.rec.abandoned[mid] = user
                    break
                time.sleep(0.3)
            time.sleep(self.pause_s)

    def _try(self, port: int, user: str, msg: bytes) -> tuple[str, str]:
        """One SMTP transaction: ("acked"|"retry"|"uncertain"|"failed", detail)."""
        dot_sent = False
        try:
            with harness.SmtpRaw(port, timeout=self.sock_timeout_s) as s:
                if s.greeting.code != 220:
                    return self._classify(s.greeting)
                for line in ("EHLO storm.test", "MAIL FROM:<storm@elsewhere.test>", f"RCPT TO:<{user}>"):
                    r = s.cmd(line)
                    if r.code != 250:
                        return self._classify(r)
                r = s.cmd("DATA")
                if r.code != 354:
                    return self._classify(r)
                s.send(harness.dot_stuff(msg))
                dot_sent = True
                s.send(b".\r\n")
                r = s.reply()
                try:
                    s.cmd("QUIT")
                except (OSError, ConnectionError, ValueError):
                    pass
                return self._classify(r)
        except (OSError, ConnectionError, ValueError) as e:
            if dot_sent:
                return "uncertain", f"{type(e).__name__} after the final dot"
            return "retry", f"connection: {type(e).__name__}"

    @staticmethod
    def _classify(r: harness.SmtpReply) -> tuple[str, str]:
        if r.code == 250:
            return "acked", ""
        detail = f"{r.code} {r.text[:60]}"
        if 400 <= r.code < 500:
            return "retry", detail
        return "failed", detail


# --- mailbox contents -------------------------------------------------------------------


def read_mailboxes(cluster: harness.Cluster, node: int, users_pw: dict[str, str]) -> dict[str, list[tuple[str, str]]]:
    """{user: [(UIDL, Message-ID) of every listed message, RETRieved through node's POP3]}.

    Duplicates are kept so the caller can see them."""
    out: dict[str, list[tuple[str, str]]] = {}
    for user, pw in users_pw.items():
        mids = []
        for uid, size, raw in harness.fetch_all(cluster.pop_port(node), user, pw):
            if size != len(raw):
                raise AssertionError(f"{user} via node {node}: LIST says {size} octets, RETR gave {len(raw)}")
            mid = harness.header_value(harness.split_trace(raw)[1], "Message-ID") or f"<no id: uidl {uid}>"
            mids.append((uid, mid))
        out[user] = mids
    return out


def compare(seen: dict[str, list[tuple[str, str]]], acked: dict[str, str], maybe: dict[str, str] | None = None) -> dict:
    """Problems between what a node listed and what was acknowledged (empty = exact).

    acked: Message-ID -> user that must be present exactly once, in that mailbox.
    maybe: Message-ID -> user that may be present at most once (outcome unknown)."""
    maybe = maybe or {}
    where: dict[str, list[str]] = {}
    for user, listed in seen.items():
        for _uid, mid in listed:
            where.setdefault(mid, []).append(user)
    problems = {}
    dups = {m: u for m, u in where.items() if len(u) > 1}
    if dups:
        problems["listed more than once"] = dups
    missing = sorted(m for m in acked if m not in where)
    if missing:
        problems["acknowledged but missing"] = missing
    wrong = {m: (u, acked[m]) for m, u in where.items() if m in acked and u[0] != acked[m]}
    if wrong:
        problems["in the wrong mailbox"] = wrong
    extra = sorted(m for m in where if m not in acked and m not in maybe)
    if extra:
        problems["never acknowledged (only 4xx or never sent)"] = extra
    return problems


def shorten(problems: dict, items_max: int = 8) -> dict:
    """Problems with each list cut to a few items (and the full count), for messages."""
    out = {}
    for k, v in problems.items():
        items = list(v.items()) if isinstance(v, dict) else list(v)
        out[k] = {"count": len(items), "first": items[:items_max]}
    return out


def copy_problems(cluster: harness.Cluster, node: int, seen: dict[str, list[tuple[str, str]]],
                  acked: dict[str, str], replicas: int) -> dict:
    """Problems between a POP3 read (`seen`, from read_mailboxes) and /v1/mailboxes
    through the same node: the two must list the same message ids, and every
    acknowledged message must have `replicas` distinct holders (`250` promises R
    durable copies). Empty = fine."""
    problems: dict[str, object] = {}
    for user, listed in seen.items():
        box = mailbox(cluster, node, user)
        holders = holders_by_id(box)
        uids = sorted(uid for uid, _ in listed)
        if sorted(holders) != uids:
            problems[f"{user}: admin ids != POP3 UIDLs"] = {
                "only admin": sorted(set(holders) - set(uids))[:5],
                "only pop3": sorted(set(uids) - set(holders))[:5],
            }
        for uid, mid in listed:
            h = holders.get(uid)
            if mid in acked and h is not None and len(set(h)) != replicas:
                problems[f"{user} {mid} ({uid})"] = h
    return problems
