"""Run one `porcupine serve --config node.toml [flags]` directly, for the tests of what
`serve` itself promises (config file, flags, limits).

Every listener binds port 0 and the node reports the ports it got in its
"porcupine node ready" log line, so there is no window in which another process
can take a port we picked. Only processes started here are ever signalled, by pid;
anything still running at exit is SIGKILLed (after SIGCONT, in case a test stopped it).
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

from harness import BINARY, HOST, http_request, register_token_file, require_binary

READY_TIMEOUT_S = 60
STOP_TIMEOUT_S = 20

_LIVE: set[subprocess.Popen] = set()


def _kill_leftovers() -> None:
    for p in list(_LIVE):
        if p.poll() is None:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(p.pid, sig)
                except ProcessLookupError:
                    pass
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        _LIVE.discard(p)


atexit.register(_kill_leftovers)

_READY = re.compile(r"porcupine node ready.*?smtp=(\S+) pop=(\S+) admin=(\S+) rpc=(\S+)")
_TOKEN_FILE = re.compile(r"porcupine node ready.*?admin_token_file=(\S+)")


class ServeNode:
    """One `porcupine serve` process with its own data dir, node.toml and log."""

    def __init__(self, toml_keys: str, args: tuple[str, ...] = ()):
        require_binary()
        self.dir = tempfile.mkdtemp(prefix="porcupine-serve-")
        self.config_path = os.path.join(self.dir, "node.toml")
        self.log_path = os.path.join(self.dir, "node.log")
        listen = "\n".join(f'{k} = "{HOST}:0"' for k in ("smtp", "pop", "admin", "rpc"))
        with open(self.config_path, "w") as f:
            f.write(f'data = "{os.path.join(self.dir, "data")}"\n{listen}\n{toml_keys}\n')
        self.args = tuple(args)
        self.proc: subprocess.Popen | None = None
        self.smtp_port = self.pop_port = self.admin_port = self.rpc_port = 0
        self.token_file: str | None = None

    @property
    def admin_url(self) -> str:
        """http://127.0.0.1:PORT of this node's admin API."""
        return f"http://{HOST}:{self.admin_port}"

    def start(self) -> "ServeNode":
        """Start the node, read its ports from the log, wait until it can take users."""
        cmd = [str(BINARY), "serve", "--config", self.config_path, *self.args]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                     start_new_session=True, env={**os.environ, "NO_COLOR": "1"})
        log.close()
        _LIVE.add(self.proc)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            m = _READY.search(self.log())
            if m:
                ports = [int(a.rsplit(":", 1)[1]) for a in m.groups()]
                self.smtp_port, self.pop_port, self.admin_port, self.rpc_port = ports
                t = _TOKEN_FILE.search(self.log())
                self.token_file = t.group(1) if t else os.path.join(self.dir, "data", "admin.token")
                register_token_file(self.admin_url, self.token_file)
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"`{' '.join(cmd)}` did not become ready:\n{self.log()}")
            time.sleep(0.05)
        # Ready to take accounts: a registry leader and complete mail maps.
        while True:
            status, body = http_request(f"{self.admin_url}/v1/cluster", timeout=10)
            if (status == 200 and isinstance(body, dict) and body.get("maps_complete")
                    and body["registry"]["leader"] is not None):
                return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"node never got a registry leader and complete maps: "
                                   f"{status} {body!r}\n{self.log()}")
            time.sleep(0.1)

    def log(self, tail_lines: int | None = None) -> str:
        """The node's log (the last tail_lines lines if given)."""
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError as e:
            return f"<cannot read {self.log_path}: {e}>"
        if tail_lines is not None:
            text = "\n".join(text.splitlines()[-tail_lines:])
        return text

    def add_user(self, address: str, password: str) -> None:
        """POST /v1/users; AssertionError unless 201."""
        status, body = http_request(f"{self.admin_url}/v1/users", "POST",
                                    {"address": address, "password": password})
        if status != 201:
            raise AssertionError(f"adding {address}: HTTP {status} {body!r}")

    def stop(self) -> None:
        """SIGTERM, wait; SIGKILL if it does not stop in time."""
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        _LIVE.discard(p)
        self.proc = None

    def cleanup(self) -> None:
        """Stop and remove the directory (kept when $PORCUPINE_E2E_KEEP is set)."""
        self.stop()
        if not os.environ.get("PORCUPINE_E2E_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)
