"""Shared helpers for the end-to-end tests: start and stop `porcupine up`, add users,
read cluster status, and small raw SMTP / POP3 clients that control bytes exactly.

Everything here talks to 127.0.0.1 only and only ever signals processes it started
itself (the `up` process, the node pids that `up` printed for it, and nodes the
tests restarted with the command line `up` printed).
"""

from __future__ import annotations

import atexit
import base64
import glob
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("PORCUPINE_BIN", REPO / "target" / "release" / "porcupine"))
HOST = "127.0.0.1"
DOMAIN = "example.test"
START_TIMEOUT_S = 90
STOP_TIMEOUT_S = 60

# Every process this module started and has not yet reaped, and every node pid `up`
# reported, so a crashed test run still leaves nothing behind (signals go to those
# pids only, never by name).
_LIVE_PROCS: set[subprocess.Popen] = set()
_NODE_PIDS: set[int] = set()


def _reap_leftovers() -> None:
    """SIGCONT (a node paused by SIGSTOP cannot act on SIGTERM), SIGTERM, wait a while,
    then SIGKILL whatever is still there."""
    for p in list(_LIVE_PROCS):
        if p.poll() is None:
            _kill_quiet(p.pid, signal.SIGCONT)
            _kill_quiet(p.pid, signal.SIGTERM)
    for pid in list(_NODE_PIDS):
        if _pid_running(pid):
            _kill_quiet(pid, signal.SIGCONT)
            _kill_quiet(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for p in list(_LIVE_PROCS):
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        _LIVE_PROCS.discard(p)
    for pid in list(_NODE_PIDS):
        while _pid_running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _pid_running(pid):
            _kill_quiet(pid, signal.SIGKILL)
        _NODE_PIDS.discard(pid)


atexit.register(_reap_leftovers)


def require_binary() -> None:
    """Fail loudly (not skip) when the server binary is missing: the suite is useless without it."""
    if not BINARY.exists():
        raise RuntimeError(f"{BINARY} not found; build it with `cargo build --release -p node`")


def require_tool(name: str, package: str | None = None) -> str:
    """The path of an external client the suite drives (swaks, curl, ...). A missing one
    fails the run, never skips it: the README's clients would otherwise go untested."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"`{name}` is not installed; install it (Debian: apt-get install {package or name}, "
            f"or run .ci/run, which installs every tool the suite needs)"
        )
    return path


def ports_free(base: int, nodes: int, reuse: bool = False) -> bool:
    """True when every port P+10i+k (k = 0..4) for the N nodes can be bound on 127.0.0.1."""
    for i in range(nodes):
        for k in range(5):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if reuse:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((HOST, base + 10 * i + k))
            except OSError:
                return False
            finally:
                s.close()
    return True


def pick_base_port(nodes: int) -> int:
    """A random base port in 20000..32000 (below Linux's ephemeral range, so outgoing
    connections cannot take it) whose 5*N ports are all free right now."""
    for _ in range(200):
        base = random.randrange(20000, 32000 - 10 * nodes)
        if ports_free(base, nodes):
            return base
    raise RuntimeError("no free port range found")


# Loopback calls must never go through a proxy named in the environment (http_proxy).
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# Admin token file of every admin API the tests started, by base URL
# ("http://127.0.0.1:PORT"): http_request and run_cli send its token.
_TOKEN_FILES: dict[str, str] = {}


def register_token_file(admin_url: str, path: str) -> None:
    """Remember that the admin API at admin_url wants the token in `path`."""
    _TOKEN_FILES[admin_url.rstrip("/")] = path


def token_file_for(url: str) -> str | None:
    """The registered token file of the admin API that `url` points into, if any."""
    for base, path in _TOKEN_FILES.items():
        if url == base or url.startswith(base + "/"):
            return path
    return None


def read_token(path: str) -> str:
    """The token in a token file (one line)."""
    with open(path) as f:
        return f.read().strip()


def http_request(url: str, method: str = "GET", body=None, timeout: float = 30,
                 headers: dict | None = None, auth: bool = True) -> tuple[int, dict | str]:
    """One admin HTTP request without any proxy; returns (status, decoded JSON or text),
    also for 4xx/5xx answers. With `auth` (the default) it sends
    `Authorization: Bearer` with the registered token of that admin API, unless
    `headers` names its own Authorization."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    all_headers = {"content-type": "application/json"}
    token_file = token_file_for(url) if auth else None
    if token_file is not None and not any(k.lower() == "authorization" for k in (headers or {})):
        all_headers["authorization"] = f"Bearer {read_token(token_file)}"
    all_headers.update(headers or {})
    req = urllib.request.Request(url, method=method, data=data, headers=all_headers)
    try:
        with _OPENER.open(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def http_get_json(url: str, timeout: float = 30) -> dict:
    """GET url (no proxy) and decode its JSON body; AssertionError unless 200."""
    status, body = http_request(url, timeout=timeout)
    if status != 200 or not isinstance(body, dict):
        raise AssertionError(f"GET {url}: HTTP {status} {body!r}")
    return body


def cli_token_args(admin: str) -> list[str]:
    """`--token-file PATH` for the admin API at `admin` when its token file is known."""
    path = token_file_for(admin)
    return [] if path is None else ["--token-file", path]


def run_cli(*args: str, admin: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    """Run `porcupine ARGS --admin URL [--token-file PATH]` and return the completed
    process (text mode)."""
    cp = subprocess.run(
        [str(BINARY), *args, "--admin", admin, *cli_token_args(admin)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and cp.returncode != 0:
        raise AssertionError(f"porcupine {' '.join(args)} failed ({cp.returncode}): {cp.stdout}{cp.stderr}")
    return cp


class NodeInfo:
    """One row of the table `porcupine up` prints, plus the node's command line."""

    def __init__(self, node_id: int, pid: int, smtp: str, pop: str, admin: str, rpc: str):
        self.node_id = node_id
        self.pid = pid
        self.smtp = smtp
        self.pop = pop
        self.admin = admin
        self.rpc = rpc
        self.command: list[str] | None = None

    @staticmethod
    def _port(addr: str) -> int:
        return int(addr.rsplit(":", 1)[1])

    @property
    def smtp_port(self) -> int:
        """SMTP port of this node."""
        return self._port(self.smtp)

    @property
    def pop_port(self) -> int:
        """POP3 port of this node."""
        return self._port(self.pop)


_ROW = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\S+:\d+)\s+(\S+:\d+)\s+(http://\S+)\s+(\S+:\d+)\s*$")
_CMD = re.compile(r"^\s*node (\d+): (.*)$")


class Cluster:
    """A `porcupine up --nodes N` run in its own process group on a random base port."""

    def __init__(self, nodes: int = 1, data: str | None = None, base_port: int | None = None,
                 up_args: tuple[str, ...] = ()):
        require_binary()
        self.nodes = nodes
        self.up_args = tuple(up_args)
        self._own_data = data is None
        self.data = data or tempfile.mkdtemp(prefix="porcupine-e2e-")
        self.base_port = base_port
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self._lines_lock = threading.Lock()
        self.info: dict[int, NodeInfo] = {}
        self.restarted: dict[int, subprocess.Popen] = {}

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> "Cluster":
        """Start `up` and wait (90 s max) until it prints "press Ctrl-C to stop".

        On a first start the base port is random, and another range is tried if some
        other process grabbed one of its ports between the probe and `up`'s own bind.
        A restart must reuse its ports (the nodes' data names them): it waits for them
        and retries a few times while one is still held."""
        first = self.base_port is None
        for attempt in range(4):
            if first:
                self.base_port = pick_base_port(self.nodes)
            try:
                return self._start_once()
            except RuntimeError as e:
                if "is not available" not in str(e) or attempt == 3:
                    raise
                time.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")

    def _start_once(self) -> "Cluster":
        assert self.base_port is not None
        # A restart reuses the previous run's ports: wait out a slow release.
        deadline = time.monotonic() + 20
        while not ports_free(self.base_port, self.nodes, reuse=True):
            if time.monotonic() > deadline:
                raise RuntimeError(f"ports from {self.base_port} still busy")
            time.sleep(0.2)
        with self._lines_lock:
            self.lines = []
        self.info = {}
        cmd = [
            str(BINARY), "up",
            "--nodes", str(self.nodes),
            "--base-port", str(self.base_port),
            "--data", self.data,
            *self.up_args,
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
            bufsize=1,
        )
        _LIVE_PROCS.add(self.proc)
        ready = threading.Event()
        self._pump_thread = threading.Thread(target=self._pump, args=(self.proc, ready), daemon=True)
        self._pump_thread.start()
        if not ready.wait(START_TIMEOUT_S) or self.proc.poll() is not None:
            out = self.output()
            self.stop()
            raise RuntimeError(
                f"`porcupine up` did not become ready in {START_TIMEOUT_S} s\n--- up output ---\n{out}\n"
                f"--- node logs ---\n{self.logs()}"
            )
        self._parse_table()
        return self

    def _pump(self, proc: subprocess.Popen, ready: threading.Event) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._lines_lock:
                self.lines.append(line.rstrip("\n"))
            if "press Ctrl-C to stop" in line:
                ready.set()
        ready.set()  # EOF: let start() see the exit instead of waiting out the timeout

    def output(self) -> str:
        """Everything `up` printed so far."""
        with self._lines_lock:
            return "\n".join(self.lines)

    def _parse_table(self) -> None:
        with self._lines_lock:
            lines = list(self.lines)
        for line in lines:
            m = _ROW.match(line)
            if m:
                i = int(m.group(1))
                self.info[i] = NodeInfo(i, int(m.group(2)), m.group(3), m.group(4), m.group(5), m.group(6))
                _NODE_PIDS.add(self.info[i].pid)
        for line in lines:
            m = _CMD.match(line)
            if m and int(m.group(1)) in self.info:
                self.info[int(m.group(1))].command = shlex.split(m.group(2))
        if sorted(self.info) != list(range(self.nodes)):
            raise RuntimeError(f"could not parse the node table from `up` output:\n{self.output()}")
        for i in self.info:
            register_token_file(self.admin_url(i), self.token_file)

    @property
    def token_file(self) -> str:
        """The admin token file `up` shares between its nodes (<data>/admin.token)."""
        return os.path.join(self.data, "admin.token")

    def stop(self) -> int | None:
        """SIGTERM the `up` process (only it) and wait; also stop nodes the tests restarted."""
        for i, p in list(self.restarted.items()):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            _LIVE_PROCS.discard(p)
            del self.restarted[i]
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    rc = self.proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    # `up` hung: kill it and the node pids it told us about (ours too).
                    self.proc.kill()
                    rc = self.proc.wait()
                    for n in self.info.values():
                        _kill_quiet(n.pid, signal.SIGKILL)
            else:
                rc = self.proc.returncode
            # `up` stops its nodes before it exits; a node it lost track of (SIGSTOPped,
            # hung) is continued and killed here so the next test finds its ports free.
            for n in self.info.values():
                if n.pid in _NODE_PIDS and _pid_running(n.pid) and n.pid not in {q.pid for q in self.restarted.values()}:
                    _kill_quiet(n.pid, signal.SIGCONT)
                    _kill_quiet(n.pid, signal.SIGKILL)
            _LIVE_PROCS.discard(self.proc)
            # `up` has exited: its stdout reaches EOF once the pump has read the last lines.
            self._pump_thread.join(5)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None
        return rc

    def cleanup(self) -> None:
        """Stop everything and remove the data dir if this object created it (kept when
        $PORCUPINE_E2E_KEEP is set, for post-mortems)."""
        self.stop()
        if self._own_data and not os.environ.get("PORCUPINE_E2E_KEEP"):
            shutil.rmtree(self.data, ignore_errors=True)

    def kill_node(self, i: int) -> None:
        """kill -9 node i (the pid from the table, not `up` itself) and wait until it is gone.

        "Gone" means its ports can be bound again: a killed multi-threaded process shows
        as a zombie while its other threads are still closing its sockets."""
        pid = self.info[i].pid
        os.kill(pid, signal.SIGKILL)
        own = self.restarted.get(i)
        if own is not None and own.pid == pid:
            own.wait(timeout=10)
            _LIVE_PROCS.discard(own)
            del self.restarted[i]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _pid_running(pid):
            time.sleep(0.02)
        if _pid_running(pid):
            raise AssertionError(f"node {i} (pid {pid}) still running 10 s after SIGKILL")
        _NODE_PIDS.discard(pid)
        base = self.base_port + 10 * i
        while time.monotonic() < deadline and not ports_free(base, 1, reuse=True):
            time.sleep(0.02)
        if not ports_free(base, 1, reuse=True):
            raise AssertionError(f"node {i}'s ports from {base} still busy 10 s after its kill")

    def pause_node(self, i: int) -> None:
        """SIGSTOP node i (it stays in the process table; resume_node or cleanup continues it)."""
        os.kill(self.info[i].pid, signal.SIGSTOP)

    def resume_node(self, i: int) -> None:
        """SIGCONT node i."""
        os.kill(self.info[i].pid, signal.SIGCONT)

    def node_running(self, i: int) -> bool:
        """True while node i's last known pid is a live (non-zombie) process."""
        return _pid_running(self.info[i].pid)

    def restart_node(self, i: int, env: dict | None = None,
                     extra_args: tuple[str, ...] = ()) -> subprocess.Popen:
        """Re-run node i's printed command line in a new process group (stopped by stop()),
        with `env` added to this process's environment and `extra_args` appended.

        Its ports are fixed by the command line: wait until they are free, and start it
        again (up to 3 times) if it exits at once because one was taken meanwhile."""
        cmd = list(self.info[i].command or []) + list(extra_args)
        child_env = {**os.environ, **(env or {})}
        prev = self.restarted.get(i)
        if prev is not None and prev.poll() is None:
            raise RuntimeError(f"node {i} is still running as pid {prev.pid}")
        if not self.info[i].command:
            raise RuntimeError(f"no command line printed for node {i}")
        base = self.base_port + 10 * i
        log_path = os.path.join(self.data, f"node-{i}.log")
        for attempt in range(3):
            deadline = time.monotonic() + 20
            while not ports_free(base, 1, reuse=True):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"node {i}'s ports from {base} still busy after 20 s")
                time.sleep(0.1)
            offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
            log = open(log_path, "ab")
            p = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                 start_new_session=True, env=child_env)
            log.close()
            _LIVE_PROCS.add(p)
            self.restarted[i] = p
            self.info[i].pid = p.pid
            # A taken port makes the node exit at once, naming it.
            try:
                p.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                return p
            _LIVE_PROCS.discard(p)
            del self.restarted[i]
            with open(log_path, "rb") as f:
                f.seek(offset)
                tail = f.read().decode("utf-8", "replace")
            if "is not available" not in tail or attempt == 2:
                raise RuntimeError(f"restarted node {i} exited at once ({p.returncode}):\n{tail[-2000:]}")
            time.sleep(0.5)
        raise AssertionError("unreachable")

    def logs(self, tail_lines: int = 60) -> str:
        """The tails of every node log, for failure messages."""
        out = []
        for path in sorted(glob.glob(os.path.join(self.data, "node-*.log"))):
            try:
                with open(path, "rb") as f:
                    text = f.read().decode("utf-8", "replace").splitlines()
            except OSError as e:
                text = [f"<cannot read: {e}>"]
            out.append(f"== {path} ==\n" + "\n".join(text[-tail_lines:]))
        return "\n".join(out)

    # --- addresses -------------------------------------------------------------------

    def smtp_port(self, i: int = 0) -> int:
        """SMTP port of node i."""
        return self.info[i].smtp_port

    def pop_port(self, i: int = 0) -> int:
        """POP3 port of node i."""
        return self.info[i].pop_port

    def pop3s_port(self, i: int = 0) -> int:
        """POP3S port of node i (`up` puts it on P+10i+4)."""
        assert self.base_port is not None
        return self.base_port + 10 * i + 4

    def tls_ca(self) -> str:
        """The CA certificate path `up` printed on its `tls ca: PATH` line."""
        for line in self.output().splitlines():
            if line.startswith("tls ca: "):
                return line[len("tls ca: "):].strip()
        raise AssertionError("up printed no 'tls ca:' line")

    def admin_url(self, i: int = 0) -> str:
        """Admin base URL of node i (http://127.0.0.1:P+10i+2)."""
        return f"http://{HOST}:{self.base_port + 10 * i + 2}"

    # --- operator CLI ----------------------------------------------------------------

    def add_user(self, address: str, password: str, node: int = 0) -> None:
        """`porcupine user add ADDR --password PW --admin URL`."""
        run_cli("user", "add", address, "--password", password, admin=self.admin_url(node))

    def add_users(self, users: list[tuple[str, str]], node: int = 0) -> None:
        """Add many users; retries only `503` (no registry leader yet, e.g. right after
        a start) for up to 15 s each; any other failure fails at once."""
        for address, password in users:
            deadline = time.monotonic() + 15
            while True:
                cp = run_cli("user", "add", address, "--password", password, admin=self.admin_url(node), check=False)
                if cp.returncode == 0:
                    break
                out = cp.stdout + cp.stderr
                if "(HTTP 503)" not in out or time.monotonic() > deadline:
                    raise AssertionError(f"user add {address} failed: {out}")
                time.sleep(0.3)

    def wait_users_known(self, addresses, nodes=None, timeout_s: float = 20) -> None:
        """Wait until every listed node's local registry replica (`GET /v1/users`)
        lists every address; a node not answering yet counts as not knowing them."""
        want = set(addresses)
        deadline = time.monotonic() + timeout_s
        for i in (range(self.nodes) if nodes is None else nodes):
            while True:
                try:
                    listed = set(http_get_json(f"{self.admin_url(i)}/v1/users", timeout=3)["users"])
                except (OSError, AssertionError, ValueError):
                    listed = set()
                if want <= listed:
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"node {i} never listed all users: missing {sorted(want - listed)}")
                time.sleep(0.2)

    def status(self, i: int = 0, timeout: float = 10) -> dict:
        """`porcupine status --json` against node i, decoded."""
        cp = run_cli("status", "--json", admin=self.admin_url(i), timeout=timeout)
        return json.loads(cp.stdout)

    def wait_ready_for_pop(self, user: str, password: str, i: int = 0, timeout_s: float = 20) -> None:
        """Wait until node i accepts a POP3 login for user (maps rebuilt after a start)."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            try:
                with PopRaw(self.pop_port(i)) as p:
                    p.cmd(f"USER {user}")
                    r = p.cmd(f"PASS {password}")
                    if r.startswith(b"+OK"):
                        p.cmd("QUIT")
                        return
                    last = r.decode("latin-1")
                    # Only "not yet" answers are waited out; a wrong password is a failure.
                    if b"[SYS/TEMP]" not in r and b"[IN-USE]" not in r:
                        raise AssertionError(f"node {i} refused the POP3 login for {user}: {last}")
            except (OSError, ConnectionError) as e:
                last = str(e)
            time.sleep(0.3)
        raise AssertionError(f"node {i} never accepted a POP3 login for {user}: {last}")


def _pid_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return False


def _kill_quiet(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# --- raw SMTP -------------------------------------------------------------------------


class SmtpReply:
    """One SMTP reply: the 3-digit code and every line's text (after the code)."""

    def __init__(self, code: int, lines: list[bytes]):
        self.code = code
        self.lines = lines

    @property
    def text(self) -> str:
        """All lines joined, decoded leniently."""
        return "\n".join(l.decode("latin-1") for l in self.lines)

    def __repr__(self) -> str:
        return f"{self.code} {self.text!r}"


class SmtpRaw:
    """A byte-exact SMTP client over a plain socket: the test decides every byte sent."""

    def __init__(self, port: int, timeout: float = 30):
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.buf = b""
        self.greeting = self.reply()

    def __enter__(self) -> "SmtpRaw":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket without QUIT."""
        try:
            self.sock.close()
        except OSError:
            pass

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"server closed the connection; pending {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self) -> SmtpReply:
        """Read one (possibly multi-line) reply."""
        lines = []
        while True:
            line = self._line()
            if len(line) < 3 or not line[:3].isdigit():
                raise ValueError(f"malformed SMTP reply line {line!r}")
            lines.append(line[4:])
            if len(line) == 3 or line[3:4] == b" ":
                return SmtpReply(int(line[:3]), lines)

    def send(self, data: bytes) -> None:
        """Send raw bytes."""
        self.sock.sendall(data)

    def cmd(self, line: str | bytes) -> SmtpReply:
        """Send one command line (CRLF added) and read its reply."""
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")
        return self.reply()

    def send_mail(self, mail_from: str, rcpts: list[str], body: bytes, ehlo: bool = True, eightbit: bool = False) -> SmtpReply:
        """One full transaction with dot-stuffing.

        Returns the reply to the final dot, or the first refusing reply of the envelope
        (after which the transaction is reset)."""
        if ehlo:
            r = self.cmd("EHLO client.test")
            if r.code != 250:
                return r
        r = self.cmd(f"MAIL FROM:<{mail_from}>" + (" BODY=8BITMIME" if eightbit else ""))
        if r.code != 250:
            return r
        for rc in rcpts:
            r = self.cmd(f"RCPT TO:<{rc}>")
            if r.code != 250:
                self.cmd("RSET")
                return r
        r = self.cmd("DATA")
        if r.code != 354:
            return r
        self.send(dot_stuff(body) + b".\r\n")
        return self.reply()


def dot_stuff(body: bytes) -> bytes:
    """Prefix every line that starts with '.' with another '.', and end with CRLF."""
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    out = body.replace(b"\r\n.", b"\r\n..")
    if out.startswith(b"."):
        out = b"." + out
    return out


def deliver(port: int, rcpts: list[str] | str, body: bytes, mail_from: str = "sender@elsewhere.test") -> SmtpReply:
    """Open a connection, send one message, QUIT; returns the reply to the final dot."""
    if isinstance(rcpts, str):
        rcpts = [rcpts]
    with SmtpRaw(port) as s:
        r = s.send_mail(mail_from, rcpts, body, eightbit=True)
        try:
            s.cmd("QUIT")
        except (OSError, ConnectionError, ValueError):
            pass
        return r


def make_message(subject: str, body: str = "hello\r\n", msgid: str | None = None) -> bytes:
    """A small RFC 5322 message with CRLF line ends."""
    msgid = msgid or f"<{random.getrandbits(64):016x}@client.test>"
    return (
        f"From: sender@elsewhere.test\r\nTo: someone@{DOMAIN}\r\nSubject: {subject}\r\n"
        f"Message-ID: {msgid}\r\n\r\n{body}"
    ).encode()


# --- raw POP3 -------------------------------------------------------------------------


class PopError(Exception):
    """A `-ERR` answer; the message holds the whole line."""


class PopRaw:
    """A byte-exact POP3 client: multi-line answers are returned un-stuffed with CRLF kept."""

    def __init__(self, port: int, timeout: float = 60):
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.buf = b""
        self.greeting = self._line()

    def __enter__(self) -> "PopRaw":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket without QUIT."""
        try:
            self.sock.close()
        except OSError:
            pass

    def _line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 2 :]
                return line
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError(f"server closed the connection; pending {self.buf[:200]!r}")
            self.buf += chunk

    def cmd(self, line: str) -> bytes:
        """Send one command, return its status line (either +OK or -ERR)."""
        self.sock.sendall(line.encode() + b"\r\n")
        return self._line()

    def ok(self, line: str) -> bytes:
        """Send one command; raise PopError unless +OK."""
        r = self.cmd(line)
        if not r.startswith(b"+OK"):
            raise PopError(r.decode("latin-1"))
        return r

    def multi(self, line: str) -> bytes:
        """Send a command with a multi-line answer; return its body un-stuffed (CRLF kept)."""
        self.ok(line)
        # Read until the terminator on a line by itself.
        while True:
            if self.buf.startswith(b".\r\n"):
                self.buf = self.buf[3:]
                return b""
            i = self.buf.find(b"\r\n.\r\n")
            if i >= 0:
                raw, self.buf = self.buf[: i + 2], self.buf[i + 5 :]
                break
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("server closed the connection inside a multi-line answer")
            self.buf += chunk
        raw = raw.replace(b"\r\n..", b"\r\n.")
        if raw.startswith(b".."):
            raw = raw[1:]
        return raw

    def login(self, user: str, password: str) -> None:
        """USER/PASS; raise PopError on -ERR."""
        self.ok(f"USER {user}")
        self.ok(f"PASS {password}")

    def auth_plain(self, user: str, password: str) -> bytes:
        """AUTH PLAIN with an initial response; returns the status line."""
        token = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode()).decode()
        return self.cmd(f"AUTH PLAIN {token}")

    def listing(self) -> dict[int, int]:
        """LIST as {number: octets}."""
        out = {}
        for l in self.multi("LIST").split(b"\r\n"):
            if l:
                n, size = l.split()
                out[int(n)] = int(size)
        return out

    def uidls(self) -> dict[int, str]:
        """UIDL as {number: uid}."""
        out = {}
        for l in self.multi("UIDL").split(b"\r\n"):
            if l:
                n, uid = l.split(None, 1)
                out[int(n)] = uid.decode()
        return out

    def retr(self, n: int) -> bytes:
        """RETR n, un-stuffed, CRLF kept."""
        return self.multi(f"RETR {n}")

    def quit(self) -> bytes:
        """QUIT; returns the status line."""
        r = self.cmd("QUIT")
        self.close()
        return r


def pop_session(port: int, user: str, password: str, timeout_s: float = 15) -> PopRaw:
    """Log in, retrying `[IN-USE]` / `[SYS/TEMP]` (a previous session's lock being released)."""
    deadline = time.monotonic() + timeout_s
    while True:
        p = PopRaw(port)
        try:
            p.login(user, password)
            return p
        except PopError as e:
            p.close()
            if time.monotonic() > deadline or ("[IN-USE]" not in str(e) and "[SYS/TEMP]" not in str(e)):
                raise
            time.sleep(0.2)


def fetch_all(port: int, user: str, password: str) -> list[tuple[str, int, bytes]]:
    """Every message of the mailbox as (uidl, LIST octets, RETR bytes); ends with QUIT."""
    p = pop_session(port, user, password)
    try:
        sizes = p.listing()
        uids = p.uidls()
        out = [(uids[n], sizes[n], p.retr(n)) for n in sorted(sizes)]
        p.quit()
        return out
    finally:
        p.close()


def split_trace(stored: bytes) -> tuple[list[bytes], bytes]:
    """Split the leading Return-Path/Received fields (with folded lines) off a stored message."""
    fields: list[bytes] = []
    rest = stored
    while True:
        lower = rest[:20].lower()
        if not (lower.startswith(b"return-path:") or lower.startswith(b"received:")):
            return fields, rest
        end = rest.find(b"\r\n")
        while end >= 0 and rest[end + 2 : end + 3] in (b" ", b"\t"):
            end = rest.find(b"\r\n", end + 2)
        if end < 0:
            return fields, rest
        fields.append(rest[: end + 2])
        rest = rest[end + 2 :]


def header_value(msg: bytes, name: str) -> str | None:
    """First value of a header field in msg (unfolded), or None."""
    head = msg.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    head = re.sub(r"\r\n[ \t]+", " ", head)
    for line in head.split("\r\n"):
        k, sep, v = line.partition(":")
        if sep and k.strip().lower() == name.lower():
            return v.strip()
    return None


def run_swaks(port: int, to: str, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """swaks against 127.0.0.1:port; returns the completed process (text mode)."""
    require_tool("swaks")
    return subprocess.run(
        ["swaks", "--server", f"{HOST}:{port}", "--from", "carol@elsewhere.test", "--to", to,
         "--helo", "client.test", *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
