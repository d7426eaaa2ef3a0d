"""Multi-host Porcupine clusters on one machine: every host a Linux network namespace
with its own address in 198.18.0.0/24 (RFC 2544's benchmarking range), wired to one
user-space switch that can also break the network between them.

Why a user-space switch and not a bridge with `tc netem`: this kernel is built
without `sch_netem` and without the `gact` drop action (see /proc/config.gz), so the
switch itself is the link emulator. Each host gets a TAP device (moved into its
namespace as `eth0`); the switch process reads every frame and forwards it, applying
per-direction rules: drop (partitions, symmetric or one-way), random loss, and delay
with jitter. Nothing crosses between namespaces except through it, and nothing here
sends traffic anywhere but to the namespaces this module created.

    python3 netns.py switch --tag T --ports N      # run by NetCluster, not by hand
    python3 netns.py up --nodes 3                  # an interactive cluster (Ctrl-C stops)

Needs root and /dev/net/tun.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import heapq
import json
import os
import random
import secrets
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BINARY = Path(os.environ.get("PORCUPINE_BIN", REPO / "target" / "release" / "porcupine"))
SUBNET = "198.18.0"
CLIENT_PORT_NAME = "client"
SMTP_PORT, POP_PORT, ADMIN_PORT, RPC_PORT, POP3S_PORT = 25, 110, 2502, 2503, 995

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000


def available() -> str | None:
    """Why multi-host tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`)"
    if shutil.which("unshare") is None:
        return "needs util-linux (`unshare`)"
    return None


def host_ip(i: int) -> str:
    return f"{SUBNET}.{10 + i}"


CLIENT_IP = f"{SUBNET}.100"


def sh(*args: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, timeout=timeout,
                          capture_output=True, text=True)


# ---------------------------------------------------------------- the switch


class Rule:
    """What happens to frames from one port to another."""

    def __init__(self, drop: bool = False, loss: float = 0.0, delay_ms: float = 0.0,
                 jitter_ms: float = 0.0):
        self.drop, self.loss, self.delay_ms, self.jitter_ms = drop, loss, delay_ms, jitter_ms


def run_switch(tag: str, names: list[str], seed: int) -> None:
    """The switch process: one TAP per name, moved into namespace `pc{tag}{name}`."""
    rng = random.Random(seed)
    taps: list[int] = []
    for k, name in enumerate(names):
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        dev = f"pc{tag}t{k}"
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", dev.encode(), IFF_TAP | IFF_NO_PI))
        ns = f"pc{tag}{name}"
        ip = CLIENT_IP if name == CLIENT_PORT_NAME else host_ip(int(name[1:]))
        sh("ip", "link", "set", dev, "netns", ns)
        sh("ip", "-n", ns, "link", "set", dev, "name", "eth0")
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        taps.append(fd)
    rules: dict[tuple[int, int], Rule] = {}
    macs: dict[bytes, int] = {}
    pending: list[tuple[float, int, int, bytes]] = []  # (due, seq, port, frame)
    seq = 0
    counts = {"forwarded": 0, "dropped": 0, "delayed": 0}
    poller = select.poll()
    for fd in taps:
        poller.register(fd, select.POLLIN)
    poller.register(sys.stdin.fileno(), select.POLLIN)
    fd_port = {fd: k for k, fd in enumerate(taps)}
    print("ready", flush=True)
    stdin_buf = b""
    while True:
        now = time.monotonic()
        while pending and pending[0][0] <= now:
            _, _, port, frame = heapq.heappop(pending)
            _write(taps[port], frame)
        wait_ms = 1000 if not pending else max(0, int((pending[0][0] - now) * 1000) + 1)
        for fd, _ in poller.poll(wait_ms):
            if fd == sys.stdin.fileno():
                chunk = os.read(fd, 65536)
                if not chunk:
                    return
                stdin_buf += chunk
                while b"\n" in stdin_buf:
                    line, stdin_buf = stdin_buf.split(b"\n", 1)
                    reply = _control(json.loads(line), rules, counts, names)
                    print(json.dumps(reply), flush=True)
                continue
            src = fd_port[fd]
            for _ in range(64):
                try:
                    frame = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if len(frame) < 14:
                    continue
                macs[frame[6:12]] = src
                dst_mac = frame[0:6]
                if dst_mac[0] & 1 or dst_mac not in macs:
                    outs = [p for p in range(len(taps)) if p != src]
                else:
                    outs = [macs[dst_mac]]
                for dst in outs:
                    rule = rules.get((src, dst))
                    if rule is None:
                        _write(taps[dst], frame)
                        counts["forwarded"] += 1
                        continue
                    if rule.drop or (rule.loss and rng.random() < rule.loss):
                        counts["dropped"] += 1
                        continue
                    delay = rule.delay_ms + (rng.uniform(-rule.jitter_ms, rule.jitter_ms)
                                             if rule.jitter_ms else 0.0)
                    if delay <= 0:
                        _write(taps[dst], frame)
                        counts["forwarded"] += 1
                    else:
                        seq += 1
                        heapq.heappush(pending, (time.monotonic() + delay / 1000, seq, dst, frame))
                        counts["delayed"] += 1


def _write(fd: int, frame: bytes) -> None:
    try:
        os.write(fd, frame)
    except (BlockingIOError, OSError):
        pass  # a full TAP queue drops the frame, as a congested link would


def _control(msg: dict, rules: dict, counts: dict, names: list[str]) -> dict:
    op = msg.get("op")
    if op == "clear":
        rules.clear()
    elif op == "set":
        rule = Rule(bool(msg.get("drop")), float(msg.get("loss", 0)),
                    float(msg.get("delay_ms", 0)), float(msg.get("jitter_ms", 0)))
        for s in msg["src"]:
            for d in msg["dst"]:
                if s != d:
                    rules[(s, d)] = rule
    elif op == "counts":
        pass
    else:
        return {"error": f"unknown op {op!r}"}
    return {"ok": True, **counts}


# ------------------------------------------------------------- namespaces


_libc = ctypes.CDLL(None, use_errno=True)


@contextmanager
def in_netns(name: str):
    """Run the block's socket creation inside namespace `name` (this thread only)."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name}")
        try:
            yield
        finally:
            if _libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the original namespace")
    finally:
        os.close(target)
        os.close(home)


class NetCluster:
    """N Porcupine hosts, each `porcupine serve` in its own namespace on 0.0.0.0, with
    one identical node.toml (seeds = every host, bootstrap_expect = N, node id from
    the host name `porcupine-i`); a client namespace for the test's traffic."""

    def __init__(self, nodes: int = 3, extra_config: str = "", seed: int = 1):
        why = available()
        if why:
            raise RuntimeError(f"multi-host cluster unavailable: {why}")
        if not BINARY.exists():
            raise RuntimeError(f"{BINARY} not found; build it with `cargo build --release -p node`")
        self.n = nodes
        self.tag = secrets.token_hex(2)
        self.work = Path(tempfile.mkdtemp(prefix=f"porcupine-netns-{self.tag}-"))
        self.names = [f"h{i}" for i in range(nodes)] + [CLIENT_PORT_NAME]
        self.procs: dict[int, subprocess.Popen] = {}
        self.switch: subprocess.Popen | None = None
        self.extra_config = extra_config
        self.seed = seed
        self._lock = threading.Lock()

    # -- lifecycle

    def ns(self, i: int | str) -> str:
        return f"pc{self.tag}{'h' + str(i) if isinstance(i, int) else i}"

    def start(self, wait: bool = True) -> "NetCluster":
        try:
            for name in self.names:
                sh("ip", "netns", "add", f"pc{self.tag}{name}")
            self.switch = subprocess.Popen(
                [sys.executable, str(Path(__file__)), "switch", "--tag", self.tag,
                 "--seed", str(self.seed), *self.names],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            line = self.switch.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"switch did not start: {line!r} {self.switch.stderr.read()}")
            self._write_files()
            for i in range(self.n):
                self.start_node(i)
            if wait:
                self.wait_formed()
        except BaseException:
            self.cleanup()
            raise
        return self

    def _write_files(self) -> None:
        tls = self.work / "tls"
        sh(str(BINARY), "ca", "init", "--dir", str(tls))
        for i in range(self.n):
            sh(str(BINARY), "cert", "issue", "--node-id", str(i), "--ca-dir", str(tls),
               "--out-dir", str(tls), "--san", host_ip(i),
               "--san", f"porcupine-{i}")
        # The certificate mail clients see on STLS / STARTTLS, for every host.
        mail_sans = [a for i in range(self.n) for a in ("--san", host_ip(i))]
        sh(str(BINARY), "cert", "issue", "--node-id", "999", "--ca-dir", str(tls),
           "--out-dir", str(tls), *mail_sans)
        token = self.work / "admin.token"
        token.write_text(secrets.token_hex(32) + "\n")
        token.chmod(0o600)
        seeds = ", ".join(f'"{host_ip(i)}:{RPC_PORT}"' for i in range(self.n))
        (self.work / "node.toml").write_text(
            "# The same file on every host.\n"
            "node_id_from_hostname = true\n"
            f'smtp = "0.0.0.0:{SMTP_PORT}"\n'
            f'pop = "0.0.0.0:{POP_PORT}"\n'
            f'admin = "0.0.0.0:{ADMIN_PORT}"\n'
            f'rpc = "0.0.0.0:{RPC_PORT}"\n'
            f"seeds = [{seeds}]\n"
            f"bootstrap_expect = {self.n}\n"
            f'admin_token_file = "{token}"\n'
            f'cluster_ca = "{tls / "ca.pem"}"\n'
            f'tls_cert = "{tls / "node-999.pem"}"\n'
            f'tls_key = "{tls / "node-999.key"}"\n'
            "ping_interval_ms = 250\n"
            "suspect_after_ms = 1500\n"
            "repair_interval_secs = 3\n"
            f"{self.extra_config}\n")
        self.token = token.read_text().strip()

    def start_node(self, i: int) -> None:
        """Start host i's node (again); a restart keeps its data directory."""
        tls = self.work / "tls"
        data = self.work / f"data-{i}"
        log = open(self.work / f"node-{i}.log", "ab")
        cmd = ["ip", "netns", "exec", self.ns(i), "unshare", "--uts", "sh", "-c",
               f'hostname porcupine-{i} && exec "$0" "$@"', str(BINARY), "serve",
               "--config", str(self.work / "node.toml"), "--data", str(data),
               "--cluster-cert", str(tls / f"node-{i}.pem"),
               "--cluster-key", str(tls / f"node-{i}.key")]
        env = dict(os.environ, PORCUPINE_LOG=os.environ.get("PORCUPINE_LOG", "info,openraft=warn"))
        with self._lock:
            self.procs[i] = subprocess.Popen(cmd, stdout=log, stderr=log, env=env,
                                             start_new_session=True)
        log.close()

    def signal_node(self, i: int, sig: int) -> None:
        p = self.procs.get(i)
        if p is not None and p.poll() is None:
            os.kill(p.pid, sig)

    def kill_node(self, i: int) -> None:
        self.signal_node(i, signal.SIGKILL)
        p = self.procs.get(i)
        if p is not None:
            p.wait(timeout=10)

    def stop(self) -> None:
        for i, p in list(self.procs.items()):
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(timeout=5)

    def cleanup(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait(timeout=5)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
        if self.switch is not None and self.switch.poll() is None:
            self.switch.kill()
            self.switch.wait(timeout=5)
        for name in self.names:
            sh("ip", "netns", "del", f"pc{self.tag}{name}", check=False)
        if os.environ.get("PORCUPINE_KEEP_NETNS_LOGS"):
            print(f"netns cluster files kept in {self.work}", file=sys.stderr)
        else:
            shutil.rmtree(self.work, ignore_errors=True)

    def logs(self, i: int, tail: int = 80) -> str:
        try:
            lines = (self.work / f"node-{i}.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-tail:])

    # -- the network

    def _switch(self, msg: dict) -> dict:
        assert self.switch is not None and self.switch.stdin is not None
        self.switch.stdin.write(json.dumps(msg) + "\n")
        self.switch.stdin.flush()
        reply = json.loads(self.switch.stdout.readline())
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    def block(self, src: list[int], dst: list[int]) -> None:
        """Frames from hosts `src` to hosts `dst` are lost (one direction)."""
        self._switch({"op": "set", "src": src, "dst": dst, "drop": True})

    def partition(self, side: list[int]) -> None:
        """Hosts `side` and the other hosts cannot hear each other (the client hears
        everyone)."""
        other = [i for i in range(self.n) if i not in side]
        self.block(side, other)
        self.block(other, side)

    def degrade(self, loss: float = 0.0, delay_ms: float = 0.0, jitter_ms: float = 0.0,
                hosts: list[int] | None = None) -> None:
        """Every link between `hosts` (default all) loses / delays frames."""
        hosts = list(range(self.n)) if hosts is None else hosts
        self._switch({"op": "set", "src": hosts, "dst": hosts, "loss": loss,
                      "delay_ms": delay_ms, "jitter_ms": jitter_ms})

    def heal(self) -> dict:
        return self._switch({"op": "clear"})

    # -- clients

    def client(self):
        """Context in which new sockets live in the client namespace."""
        return in_netns(self.ns(CLIENT_PORT_NAME))

    def ca_file(self) -> str:
        return str(self.work / "tls" / "ca.pem")

    def admin_url(self, i: int) -> str:
        return f"http://{host_ip(i)}:{ADMIN_PORT}"

    def get_json(self, i: int, path: str, timeout: float = 5) -> dict:
        import urllib.request
        req = urllib.request.Request(self.admin_url(i) + path,
                                     headers={"Authorization": f"Bearer {self.token}"})
        with self.client():
            conn = urllib.request.urlopen(req, timeout=timeout)
        with conn:
            return json.loads(conn.read())

    def cli(self, *args: str, node: int = 0, timeout: float = 60,
            check: bool = True) -> subprocess.CompletedProcess:
        cmd = ["ip", "netns", "exec", self.ns(CLIENT_PORT_NAME), str(BINARY), *args,
               "--admin", self.admin_url(node), "--token-file", str(self.work / "admin.token")]
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and cp.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({cp.returncode}): {cp.stderr}{cp.stdout}")
        return cp

    def cluster(self, i: int) -> dict | None:
        try:
            return self.get_json(i, "/v1/cluster", timeout=3)
        except Exception:
            return None

    def wait_view(self, members: list[int], timeout_s: float = 60) -> float:
        """Wait until every host in `members` has exactly `members` live; seconds taken."""
        t0 = time.monotonic()
        want = sorted(members)
        last = {}
        while time.monotonic() - t0 < timeout_s:
            views = {i: self.cluster(i) for i in members}
            last = {i: (v or {}).get("live") for i, v in views.items()}
            if all(v is not None and sorted(v.get("live", [])) == want
                   and v.get("maps_complete") for v in views.values()):
                return time.monotonic() - t0
            time.sleep(0.3)
        raise AssertionError(f"views never converged on {want} in {timeout_s} s: {last}")

    def wait_formed(self, timeout_s: float = 90) -> float:
        """Wait for one view of every host and one registry with every host in it
        (one leader all agree on, voters from this cluster) that commits a write."""
        t0 = time.monotonic()
        self.wait_view(list(range(self.n)), timeout_s)
        deadline = t0 + timeout_s
        last = ""
        while time.monotonic() < deadline:
            regs = [(self.cluster(i) or {}).get("registry") or {} for i in range(self.n)]
            leaders = {r.get("leader") for r in regs}
            members = [set(r.get("voters") or []) | set(r.get("learners") or []) for r in regs]
            if (len(leaders) == 1 and None not in leaders
                    and all(m == set(range(self.n)) for m in members)):
                probe = f"formed-{secrets.token_hex(3)}@netns.test"
                cp = self.cli("user", "add", probe, "--password", "pw", check=False, timeout=30)
                if cp.returncode == 0:
                    self.cli("user", "del", probe, check=False, timeout=30)
                    return time.monotonic() - t0
                last = cp.stderr + cp.stdout
            else:
                last = f"registries: {regs}"
            time.sleep(0.5)
        raise AssertionError(f"registry never formed: {last}\n{self.logs(0)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sw = sub.add_parser("switch")
    sw.add_argument("--tag", required=True)
    sw.add_argument("--seed", type=int, default=1)
    sw.add_argument("names", nargs="+")
    up = sub.add_parser("up", help="start a multi-host cluster and keep it until Ctrl-C")
    up.add_argument("--nodes", type=int, default=3)
    args = ap.parse_args()
    if args.cmd == "switch":
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        run_switch(args.tag, args.names, args.seed)
        return 0
    c = NetCluster(args.nodes)
    c.start()
    print(f"{args.nodes} hosts formed one cluster (files in {c.work})")
    for i in range(args.nodes):
        print(f"  host {i}: namespace {c.ns(i)}, {host_ip(i)} (smtp :25, pop3 :110, admin :2502)")
    print(f"  client namespace {c.ns(CLIENT_PORT_NAME)} ({CLIENT_IP}), e.g.:")
    print(f"    ip netns exec {c.ns(CLIENT_PORT_NAME)} swaks --server {host_ip(0)} --to x@example.test")
    print(f"  admin token file {c.work / 'admin.token'}. Ctrl-C stops and removes everything.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        c.stop()
        c.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
