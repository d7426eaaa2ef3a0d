"""The operator CLI and the admin HTTP API, as the README documents them."""

import json
import os
import subprocess
import unittest

import harness
from harness import DOMAIN


class AdminTest(unittest.TestCase):
    cluster: harness.Cluster

    @classmethod
    def setUpClass(cls):
        cls.cluster = harness.Cluster(nodes=1).start()
        cls.addClassCleanup(cls.cluster.cleanup)
        cls.admin = cls.cluster.admin_url()

    def http(self, method: str, path: str, body=None) -> tuple[int, dict | str]:
        return harness.http_request(self.admin + path, method=method, body=body)

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(harness.BINARY), *args, "--admin", self.admin,
                               *harness.cli_token_args(self.admin)],
                              input=stdin, capture_output=True, text=True, timeout=60)

    def pop_login(self, addr: str, pw: str) -> bytes:
        with harness.PopRaw(self.cluster.pop_port()) as p:
            p.ok(f"USER {addr}")
            return p.cmd(f"PASS {pw}")

    def test_user_lifecycle_through_cli(self):
        addr = f"carl@{DOMAIN}"
        cp = self.cli("user", "add", addr, "--password", "first")
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertIn(addr, self.cli("user", "list").stdout.split())
        # Adding it again fails (409) and leaves the password alone.
        cp = self.cli("user", "add", addr, "--password", "other")
        self.assertNotEqual(cp.returncode, 0)
        self.assertTrue(self.pop_login(addr, "first").startswith(b"+OK"))
        # passwd: the old password stops working at once (no stale login cache).
        cp = self.cli("user", "passwd", addr, "--password-stdin", stdin="second\n")
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertTrue(self.pop_login(addr, "first").startswith(b"-ERR [AUTH]"))
        self.assertTrue(self.pop_login(addr, "second").startswith(b"+OK"))
        # del: no more mail, no more logins, gone from the list.
        cp = self.cli("user", "del", addr)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertNotIn(addr, self.cli("user", "list").stdout.split())
        with harness.SmtpRaw(self.cluster.smtp_port()) as s:
            r = s.send_mail("x@elsewhere.test", [addr], b"Subject: x\r\n\r\nx\r\n")
        self.assertEqual(r.code, 550, r)
        self.assertTrue(self.pop_login(addr, "second").startswith(b"-ERR [AUTH]"))
        self.assertNotEqual(self.cli("user", "del", addr).returncode, 0)

    def test_password_stdin(self):
        addr = f"dora@{DOMAIN}"
        cp = self.cli("user", "add", addr, "--password-stdin", stdin="from-stdin\n")
        self.assertEqual(cp.returncode, 0, cp.stderr)
        # The trailing newline of `echo` is not part of the password.
        self.assertTrue(self.pop_login(addr, "from-stdin").startswith(b"+OK"))

    def test_new_domain_becomes_local(self):
        with harness.SmtpRaw(self.cluster.smtp_port()) as s:
            s.cmd("EHLO client.test")
            s.cmd("MAIL FROM:<x@elsewhere.test>")
            self.assertEqual(s.cmd("RCPT TO:<eve@fresh-domain.test>").code, 550)
        self.cluster.add_user("eve@fresh-domain.test", "pw")
        status, body = self.http("GET", "/v1/domains")
        self.assertEqual(status, 200)
        self.assertIn("fresh-domain.test", body["domains"])
        r = harness.deliver(self.cluster.smtp_port(), "eve@fresh-domain.test", harness.make_message("new domain"))
        self.assertEqual(r.code, 250, r)

    def test_http_api_answers(self):
        status, body = self.http("GET", "/v1/health")
        self.assertEqual((status, body.get("ok"), body.get("node")), (200, True, 0))
        status, body = self.http("POST", "/v1/users", {"address": f"fay@{DOMAIN}", "password": "pw"})
        self.assertEqual(status, 201, body)
        status, body = self.http("POST", "/v1/users", {"address": f"fay@{DOMAIN}", "password": "pw"})
        self.assertEqual(status, 409, body)
        self.assertIn("error", body)
        status, body = self.http("POST", "/v1/users", {"address": "no-at-sign", "password": "pw"})
        self.assertEqual(status, 400, body)
        self.assertIn("error", body)
        status, body = self.http("GET", "/v1/users")
        self.assertEqual(status, 200)
        self.assertIn(f"fay@{DOMAIN}", body["users"])
        status, body = self.http("PUT", f"/v1/users/fay@{DOMAIN}/password", {"password": "pw2"})
        self.assertEqual(status, 200, body)
        self.assertTrue(self.pop_login(f"fay@{DOMAIN}", "pw2").startswith(b"+OK"))
        status, body = self.http("PUT", f"/v1/users/ghost@{DOMAIN}/password", {"password": "x"})
        self.assertEqual(status, 404, body)
        status, body = self.http("DELETE", f"/v1/users/ghost@{DOMAIN}")
        self.assertEqual(status, 404, body)
        status, body = self.http("DELETE", f"/v1/users/fay@{DOMAIN}")
        self.assertEqual(status, 200, body)
        status, body = self.http("GET", "/v1/cluster")
        self.assertEqual(status, 200)
        self.assertEqual(body["live"], [0])
        self.assertIsInstance(body["epoch"], int)

    def test_metrics_prometheus_text(self):
        # README documents the endpoint and format, not metric names: check the format.
        status, text = self.http("GET", "/metrics")
        self.assertEqual(status, 200)
        self.assertIsInstance(text, str)
        samples = [l for l in text.splitlines() if l and not l.startswith("#")]
        self.assertTrue(any(l.startswith("# TYPE ") for l in text.splitlines()), text[:200])
        self.assertTrue(samples)
        for line in samples:
            name, value = line.rsplit(" ", 1)
            float(value)  # every sample ends in a number
            self.assertRegex(name, r"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})?$")

    def test_status_prints_view(self):
        # The table and the JSON describe the same view: epoch, this node, its row.
        st = json.loads(self.cli("status", "--json").stdout)
        cp = self.cli("status")
        self.assertEqual(cp.returncode, 0, cp.stderr)
        lines = cp.stdout.splitlines()
        self.assertRegex(lines[0], rf"^cluster:  view epoch {st['epoch']} \(coordinator \d+\), 1 of 1 known nodes live; asked node 0$")
        self.assertRegex(lines[1], r"^registry: leader: 0  voters: 0  learners: none  term \d+$")
        self.assertEqual(lines[2], "versions: 0.1.0 (rpc 1, reads 1-1; data format 1) on every node that answered")
        self.assertRegex(lines[3], r"^mail:     \d+ message copies, \d+ tombstones, .* in segments; smtp accepted \d+, refused \d+; pop3 retrieved \d+$")
        self.assertRegex(lines[4], r"^repair:   under-replicated 0 \(pending 0\), copies made \d+, tombstones spread \d+, collected \d+, passes \d+ ")
        self.assertEqual(lines[5], "")
        self.assertEqual(lines[6].split(), ["id", "state", "load", "buckets", "messages", "users", "stored", "disk", "free", "maps", "smtp", "admin"])
        self.assertEqual(len(lines), 8, cp.stdout)
        row = lines[7].split()
        c = self.cluster
        self.assertEqual(row[:2], ["0", "up"], "a fresh node's disk is not nearly full")
        self.assertEqual(lines[7], lines[7].rstrip(), "no trailing blanks")
        self.assertEqual(int(row[3]), 65536, "a single node holds every bucket")
        self.assertEqual(row[-3:], ["complete", c.info[0].smtp, c.info[0].admin.removeprefix("http://")], cp.stdout)
        self.assertNotIn("null", cp.stdout)
        self.assertEqual([n["alive"] for n in st["nodes"]], [True])
        self.assertEqual(st["nodes"][0]["smtp"], f"127.0.0.1:{self.cluster.smtp_port()}")
        self.assertEqual(st["cluster"]["answered"], [0])

    def test_cli_without_server_fails_cleanly(self):
        port = harness.pick_base_port(1)
        cp = subprocess.run([str(harness.BINARY), "user", "list", "--admin", f"http://127.0.0.1:{port}"],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PORCUPINE_TOKEN": "some-token"})
        self.assertNotEqual(cp.returncode, 0)
        self.assertNotIn("panicked", cp.stderr)


if __name__ == "__main__":
    unittest.main()
