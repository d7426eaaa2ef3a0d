"""README promises about one `porcupine serve` node, checked through the binary:
`--config node.toml` with flags winning over the file, `--hostname` in greetings and
`Received`, `$PORCUPINE_ADMIN`, the connection caps, the idle timeouts, the SMTP text
line, error and command caps, and no relay for local senders.

One node (started with `serve --config node.toml --hostname ...`, every port 0) is
shared by the class; each test creates its own users and leaves no connection open.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import BINARY, HOST, DOMAIN, PopRaw, SmtpRaw, header_value, http_get_json, http_request, make_message, pop_session, split_trace
import harness
from serve_proc import ServeNode

FILE_HOSTNAME = "file.example.test"
FLAG_HOSTNAME = "flag.example.test"
NODE_ID = 7
CONNECTIONS_MAX = 3
IDLE_TIMEOUT_S = 3
# Not configurable: smtp::SmtpConfig's defaults.
SMTP_ERRORS_MAX = 10
SMTP_COMMANDS_MAX = 10_000

SMTP_BUSY = b"421 4.7.0 too many connections, try again later\r\n"
POP_BUSY = b"-ERR [SYS/TEMP] too many connections, try again later\r\n"
HTTP_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 32\r\n"
             b"connection: close\r\n\r\n{\"error\":\"too many connections\"}")
HTTP_HEALTH = b"GET /v1/health HTTP/1.1\r\nhost: x\r\n\r\n"

# A node of its own for the HTTP caps: a closed keep-alive connection frees its slot
# only once the server notices, so a capped admin API would refuse the shared node's
# next request for a moment.
HTTP_CAP_TOML = f"""
admin_connections_max = {CONNECTIONS_MAX}
rpc_connections_max = {CONNECTIONS_MAX}
pop_auth_failure_delay_ms = 100
"""

NODE_TOML = f"""
node_id = {NODE_ID}
hostname = "{FILE_HOSTNAME}"
smtp_connections_max = {CONNECTIONS_MAX}
pop_connections_max = {CONNECTIONS_MAX}
smtp_idle_timeout_secs = {IDLE_TIMEOUT_S}
pop_idle_timeout_secs = {IDLE_TIMEOUT_S}
pop_auth_failure_delay_ms = 100
"""


def read_to_eof(sock: socket.socket, timeout_s: float, what: str = "") -> bytes:
    """Everything the server sends until it closes; AssertionError (naming `what`) if it
    stays open longer than timeout_s."""
    sock.settimeout(timeout_s)
    out = b""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            raise AssertionError(f"{what}: server did not close within {timeout_s} s; got {out!r}")
        except ConnectionResetError:
            return out
        if not chunk:
            return out
        out += chunk
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: server did not close within {timeout_s} s; got {out!r}")


def unique_user(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}@{DOMAIN}"


class ServeNodeTests(unittest.TestCase):
    node: ServeNode

    @classmethod
    def setUpClass(cls):
        cls.node = ServeNode(NODE_TOML, ("--hostname", FLAG_HOSTNAME)).start()
        cls.http_node = ServeNode(HTTP_CAP_TOML, ()).start()

    @classmethod
    def tearDownClass(cls):
        cls.node.cleanup()
        cls.http_node.cleanup()

    def fail_with_log(self, msg: str):
        self.fail(f"{msg}\n--- node log ---\n{self.node.log(40)}")

    def smtp(self) -> SmtpRaw:
        """A greeted SMTP session. Another test's session the server has not yet seen
        end may still hold a slot: only the exact over-cap answer is retried."""
        deadline = time.monotonic() + 10
        while True:
            s = SmtpRaw(self.node.smtp_port)
            if s.greeting.code == 220:
                return s
            s.close()
            if s.greeting.code != 421 or time.monotonic() > deadline:
                self.fail(f"SMTP greeting {s.greeting!r}")
            time.sleep(0.1)

    def pop(self, user: str, password: str) -> PopRaw:
        """A logged-in POP3 session (retries only [IN-USE]/[SYS/TEMP])."""
        return pop_session(self.node.pop_port, user, password)

    # --- serve --config, flags win, --hostname ---------------------------------------

    def test_config_file_read_and_flag_wins(self):
        """node_id and the caps come from node.toml; --hostname beats the file's hostname."""
        status = http_get_json(f"{self.node.admin_url}/v1/cluster")
        self.assertEqual(status["node"], NODE_ID, "node_id from node.toml not applied")
        with self.smtp() as s:
            self.assertEqual(s.greeting.text, f"{FLAG_HOSTNAME} ESMTP Porcupine",
                             "SMTP greeting must carry the --hostname flag, not the file's hostname")
            ehlo = s.cmd("EHLO client.test")
            self.assertEqual(ehlo.code, 250)
            self.assertTrue(ehlo.text.startswith(FLAG_HOSTNAME), ehlo.text)
            s.cmd("QUIT")
        with PopRaw(self.node.pop_port) as p:
            self.assertEqual(p.greeting, f"+OK {FLAG_HOSTNAME} POP3 Porcupine ready".encode())
            p.cmd("QUIT")
        self.assertNotIn(FILE_HOSTNAME.encode(), s.greeting.text.encode())

    def test_hostname_in_received_header(self):
        """The stored message's Received field says `by <--hostname>`."""
        user = unique_user("rcvd")
        self.node.add_user(user, "pw")
        with self.smtp() as s:
            r = s.send_mail("sender@elsewhere.test", [user], make_message("trace"))
            self.assertEqual(r.code, 250, r)
            s.cmd("QUIT")
        p = self.pop(user, "pw")
        try:
            self.assertEqual(len(p.listing()), 1)
            stored = p.retr(1)
            p.quit()
        finally:
            p.close()
        fields, _ = split_trace(stored)
        received = [f for f in fields if f.lower().startswith(b"received:")]
        self.assertEqual(len(received), 1, fields)
        unfolded = received[0].replace(b"\r\n\t", b" ").decode()
        self.assertIn(f" by {FLAG_HOSTNAME} (Porcupine) with ESMTP id ", unfolded)
        self.assertNotIn(FILE_HOSTNAME, unfolded)

    # --- $PORCUPINE_ADMIN ------------------------------------------------------------

    def test_porcupine_admin_env(self):
        """Without --admin the CLI talks to $PORCUPINE_ADMIN."""
        env = {k: v for k, v in os.environ.items() if k != "PORCUPINE_ADMIN"}
        env["PORCUPINE_ADMIN"] = self.node.admin_url
        env["PORCUPINE_TOKEN_FILE"] = self.node.token_file
        cp = subprocess.run([str(BINARY), "status", "--json"], env=env, capture_output=True,
                            text=True, timeout=30)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertEqual(json.loads(cp.stdout)["node"], NODE_ID,
                         "status did not come from the node named by $PORCUPINE_ADMIN")
        user = unique_user("env")
        cp = subprocess.run([str(BINARY), "user", "add", user, "--password", "pw"], env=env,
                            capture_output=True, text=True, timeout=30)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        users = http_get_json(f"{self.node.admin_url}/v1/users")["users"]
        self.assertIn(user, users)
        # And it is the variable that decides: pointed at a port nobody listens on, the
        # CLI fails and names that address.
        hold = socket.socket()
        hold.bind((HOST, 0))
        dead = f"http://{HOST}:{hold.getsockname()[1]}"
        try:
            env["PORCUPINE_ADMIN"] = dead
            cp = subprocess.run([str(BINARY), "user", "list"], env=env, capture_output=True,
                                text=True, timeout=30)
        finally:
            hold.close()
        self.assertNotEqual(cp.returncode, 0, cp.stdout)
        self.assertIn(dead, cp.stderr)

    # --- connection caps -------------------------------------------------------------

    def _served(self, port: int, hello: bytes, served: bytes, busy: bytes) -> socket.socket | None:
        """Connect (and send `hello`): the socket when the server answered `served...`,
        None (closed) when it answered exactly `busy`; anything else fails."""
        s = socket.create_connection((HOST, port), timeout=10)
        if hello:
            s.sendall(hello)
        first = s.recv(65536)
        if first.startswith(served):
            return s
        s.close()
        self.assertEqual(first, busy, "only the busy answer may come instead of service")
        return None

    def _check_cap(self, port: int, busy: bytes, served: bytes, quit_cmd: bytes | None, hello: bytes = b""):
        """CONNECTIONS_MAX clients are served; one more gets exactly `busy` and EOF; once
        one leaves (with `quit_cmd`, or by closing), a new client is served again."""
        socks = []
        try:
            # Fill every slot; wait (bounded) for slots of earlier sessions to free up.
            deadline = time.monotonic() + 10
            while len(socks) < CONNECTIONS_MAX:
                s = self._served(port, hello, served, busy)
                if s is not None:
                    socks.append(s)
                    continue
                if time.monotonic() > deadline:
                    self.fail_with_log(f"connection {len(socks) + 1} of {CONNECTIONS_MAX} still refused after 10 s")
                time.sleep(0.1)
            # One over the cap: exactly the busy answer, then the server closes.
            over = socket.create_connection((HOST, port), timeout=10)
            try:
                if hello:
                    over.sendall(hello)
                got = read_to_eof(over, 10, "over-cap client")
            finally:
                over.close()
            self.assertEqual(got, busy, "over-cap client must get exactly the busy answer and EOF")
            # One leaves; a new client is then served.
            gone = socks.pop()
            if quit_cmd is not None:
                gone.sendall(quit_cmd)
                read_to_eof(gone, 10, "client leaving with QUIT")
            gone.close()
            deadline = time.monotonic() + 10
            while True:
                s = self._served(port, hello, served, busy)
                if s is not None:
                    socks.append(s)
                    break
                if time.monotonic() > deadline:
                    self.fail_with_log("no new client was served within 10 s after one left")
                time.sleep(0.05)
        finally:
            for s in socks:
                if quit_cmd is not None:
                    try:
                        s.sendall(quit_cmd)
                    except OSError:
                        pass
                s.close()

    def test_smtp_connections_max(self):
        self._check_cap(self.node.smtp_port, SMTP_BUSY, b"220 ", b"QUIT\r\n")

    def test_pop_connections_max(self):
        self._check_cap(self.node.pop_port, POP_BUSY, b"+OK ", b"QUIT\r\n")

    def test_admin_connections_max(self):
        """`admin_connections_max`: keep-alive HTTP clients hold the slots; one over the
        cap gets a 503 with a JSON error and EOF."""
        token = harness.read_token(self.http_node.token_file)
        hello = f"GET /v1/health HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\r\n".encode()
        self._check_cap(self.http_node.admin_port, HTTP_BUSY, b"HTTP/1.1 200 ", None, hello=hello)
        self.assertEqual(json.loads(HTTP_BUSY.split(b"\r\n\r\n", 1)[1]), {"error": "too many connections"})

    def test_rpc_connections_max(self):
        """`rpc_connections_max` on the cluster RPC listener (a plain HTTP/1.1 GET is not
        an RPC: answered 404, and the kept-alive connection still holds a slot)."""
        self._check_cap(self.http_node.rpc_port, HTTP_BUSY, b"HTTP/1.1 404 ", None, hello=HTTP_HEALTH)

    # --- idle timeouts ---------------------------------------------------------------

    def test_smtp_idle_timeout(self):
        """A silent client gets `421 4.4.2 <host> idle timeout` after the configured time, then EOF."""
        with self.smtp() as s:
            self.assertEqual(s.cmd("EHLO client.test").code, 250)
            t0 = time.monotonic()
            got = read_to_eof(s.sock, IDLE_TIMEOUT_S + 10, f"silent SMTP client, idle timeout {IDLE_TIMEOUT_S} s")
            elapsed = time.monotonic() - t0
        self.assertEqual(got, f"421 4.4.2 {FLAG_HOSTNAME} idle timeout\r\n".encode())
        self.assertGreaterEqual(elapsed, IDLE_TIMEOUT_S - 0.5, "closed before the idle timeout")

    def test_pop_idle_timeout(self):
        """A silent POP3 client is logged out without UPDATE: the connection closes with
        no response, and a DELE of that session is not applied (RFC 1939 section 3)."""
        user = unique_user("idle")
        self.node.add_user(user, "pw")
        with self.smtp() as s:
            self.assertEqual(s.send_mail("sender@elsewhere.test", [user], make_message("keep")).code, 250)
            s.cmd("QUIT")
        p = self.pop(user, "pw")
        try:
            self.assertTrue(p.cmd("DELE 1").startswith(b"+OK"))
            t0 = time.monotonic()
            got = p.buf + read_to_eof(p.sock, IDLE_TIMEOUT_S + 10, f"silent POP3 client, idle timeout {IDLE_TIMEOUT_S} s")
            elapsed = time.monotonic() - t0
        finally:
            p.close()
        self.assertEqual(got, b"", "RFC 1939 section 3: an autologout sends no response")
        self.assertGreaterEqual(elapsed, IDLE_TIMEOUT_S - 0.5, "closed before the idle timeout")
        p = self.pop(user, "pw")
        try:
            self.assertEqual(len(p.listing()), 1, "the DELE of a timed-out session was applied")
            p.quit()
        finally:
            p.close()

    # --- SMTP line, error and command caps; relay --------------------------------------

    def test_text_line_1000_octets(self):
        """A DATA line of 1000 octets with CRLF is taken; 1001 is refused `552 5.3.4`
        after the final dot and nothing of it is stored; the session goes on."""
        user = unique_user("line")
        self.node.add_user(user, "pw")
        ok_line = b"a" * 998  # + CRLF = 1000 octets
        long_line = b"b" * 999  # + CRLF = 1001 octets
        with self.smtp() as s:
            r = s.send_mail("sender@elsewhere.test", [user],
                            make_message("fits", body="x\r\n") + ok_line + b"\r\n")
            self.assertEqual(r.code, 250, r)
            r = s.send_mail("sender@elsewhere.test", [user],
                            make_message("too-long", body="x\r\n") + long_line + b"\r\n", ehlo=False)
            self.assertEqual((r.code, r.text), (552, "5.3.4 Line too long"))
            r = s.send_mail("sender@elsewhere.test", [user], make_message("after"), ehlo=False)
            self.assertEqual(r.code, 250, f"session unusable after the refusal: {r!r}")
            s.cmd("QUIT")
        p = self.pop(user, "pw")
        try:
            msgs = [p.retr(n) for n in sorted(p.listing())]
            p.quit()
        finally:
            p.close()
        subjects = sorted(header_value(m, "Subject") for m in msgs)
        self.assertEqual(subjects, ["after", "fits"])
        fits = next(m for m in msgs if header_value(m, "Subject") == "fits")
        self.assertIn(b"\r\n" + ok_line + b"\r\n", fits)

    def test_smtp_error_cap(self):
        """The 10th bad command is answered, then `421 4.7.0 <host> too many errors` and EOF."""
        with self.smtp() as s:
            for i in range(SMTP_ERRORS_MAX - 1):
                r = s.cmd("FROB")
                self.assertEqual((r.code, r.text), (500, "5.5.2 Command unrecognized"), f"error {i + 1}")
            self.assertEqual(s.cmd("NOOP").code, 250, "closed before the error cap")
            s.send(b"FROB\r\n")
            got = s.buf + read_to_eof(s.sock, 10, f"bad command number {SMTP_ERRORS_MAX}")
        self.assertEqual(got, b"500 5.5.2 Command unrecognized\r\n"
                              + f"421 4.7.0 {FLAG_HOSTNAME} too many errors\r\n".encode())

    def test_smtp_command_cap(self):
        """10,000 commands are answered; the next gets `421 4.7.0 <host> too many commands`, EOF."""
        with self.smtp() as s:
            self.assertEqual(s.cmd("EHLO client.test").code, 250)
            left = SMTP_COMMANDS_MAX - 1
            while left:
                n = min(1000, left)
                s.send(b"NOOP\r\n" * n)
                for _ in range(n):
                    r = s.reply()
                    self.assertEqual((r.code, r.text), (250, "2.0.0 Ok"),
                                     f"command {SMTP_COMMANDS_MAX - left + 1}")
                left -= n
            s.send(b"NOOP\r\n")
            got = s.buf + read_to_eof(s.sock, 10, f"command number {SMTP_COMMANDS_MAX + 1}")
        self.assertEqual(got, f"421 4.7.0 {FLAG_HOSTNAME} too many commands\r\n".encode())

    def test_no_relay_for_local_sender(self):
        """MAIL FROM a local account to an outside domain: `550 5.7.1` per outside RCPT;
        only the local recipient gets the message."""
        user = unique_user("relay")
        self.node.add_user(user, "pw")
        with self.smtp() as s:
            self.assertEqual(s.cmd("EHLO client.test").code, 250)
            self.assertEqual(s.cmd(f"MAIL FROM:<{user}>").code, 250)
            for outside in ("someone@outside.test", f"someone@{DOMAIN}.outside.test",
                            "SOMEONE@Outside.Test"):
                r = s.cmd(f"RCPT TO:<{outside}>")
                self.assertEqual((r.code, r.text), (550, "5.7.1 relaying denied"), outside)
            self.assertEqual(s.cmd(f"RCPT TO:<{user}>").code, 250)
            self.assertEqual(s.cmd("DATA").code, 354)
            s.send(make_message("local only") + b".\r\n")
            self.assertEqual(s.reply().code, 250)
            s.cmd("QUIT")
        p = self.pop(user, "pw")
        try:
            self.assertEqual(len(p.listing()), 1)
            p.quit()
        finally:
            p.close()


if __name__ == "__main__":
    unittest.main()
