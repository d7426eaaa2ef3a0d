"""The admin API's bearer token (issue 11): every request needs it, `up` writes it into
the data dir (mode 0600) where the CLI finds it, the CLI takes it from --token-file or
the environment, and `serve` will not start with admin off loopback without one."""

import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
import unittest

import harness
from harness import BINARY, DOMAIN, HOST, http_request


class AdminTokenTest(unittest.TestCase):
    """One `up` node whose data dir is ./porcupine-data of a scratch directory, as the
    README's two-command start has it."""

    @classmethod
    def setUpClass(cls):
        cls.top = tempfile.mkdtemp(prefix="porcupine-token-")
        cls.addClassCleanup(shutil.rmtree, cls.top, True)
        cls.cluster = harness.Cluster(nodes=1, data=os.path.join(cls.top, "porcupine-data")).start()
        cls.addClassCleanup(cls.cluster.cleanup)
        cls.admin = cls.cluster.admin_url()
        cls.token = harness.read_token(cls.cluster.token_file)

    def cli(self, *args: str, env: dict | None = None, cwd: str | None = None) -> subprocess.CompletedProcess:
        """The CLI with an environment free of inherited PORCUPINE_* token settings."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("PORCUPINE_TOKEN")}
        return subprocess.run([str(BINARY), *args, "--admin", self.admin], env={**base, **(env or {})},
                              cwd=cwd or self.top, capture_output=True, text=True, timeout=60)

    # --- the HTTP API -----------------------------------------------------------------

    def test_token_file_is_private_and_random(self):
        mode = stat.S_IMODE(os.stat(self.cluster.token_file).st_mode)
        self.assertEqual(mode, 0o600, oct(mode))
        self.assertRegex(self.token, r"^[0-9a-f]{64}$")
        self.assertIn(f"admin token: {self.cluster.token_file}", self.cluster.output())
        # Never in a log or in up's output.
        self.assertNotIn(self.token, self.cluster.output())
        self.assertNotIn(self.token, self.cluster.logs(tail_lines=100000))

    def test_no_token_is_401(self):
        for method, path in [("GET", "/v1/health"), ("GET", "/v1/users"), ("GET", "/metrics"),
                             ("PUT", f"/v1/users/x@{DOMAIN}/password"), ("GET", "/nowhere")]:
            status, body = http_request(self.admin + path, method,
                                        {"password": "p"} if method == "PUT" else None, auth=False)
            self.assertEqual(status, 401, (method, path, body))
            self.assertIsInstance(body, dict, body)
            self.assertIn("token", body["error"])

    def test_401_names_the_scheme(self):
        import urllib.error
        import urllib.request
        req = urllib.request.Request(self.admin + "/v1/users")
        with self.assertRaises(urllib.error.HTTPError) as cm:
            harness._OPENER.open(req, timeout=10)
        self.assertEqual(cm.exception.code, 401)
        self.assertTrue(cm.exception.headers.get("WWW-Authenticate", "").startswith("Bearer"),
                        dict(cm.exception.headers))

    def test_wrong_token_is_401(self):
        wrong = ["Bearer " + "0" * 64, "Bearer " + self.token[:-1], "Bearer " + self.token + "0",
                 "Basic " + self.token, self.token, "Bearer"]
        for h in wrong:
            status, body = http_request(self.admin + "/v1/users", headers={"Authorization": h})
            self.assertEqual(status, 401, (h, body))
        # A password reset without the token changes nothing.
        addr = f"guarded@{DOMAIN}"
        self.cluster.add_user(addr, "original")
        status, _ = http_request(f"{self.admin}/v1/users/{addr}/password", "PUT",
                                 {"password": "stolen"}, headers={"Authorization": "Bearer nope"})
        self.assertEqual(status, 401)
        with harness.PopRaw(self.cluster.pop_port()) as p:
            p.ok(f"USER {addr}")
            self.assertTrue(p.cmd("PASS original").startswith(b"+OK"))

    def test_right_token_is_200(self):
        for path in ["/v1/health", "/v1/users", "/v1/cluster", "/metrics"]:
            status, body = http_request(self.admin + path,
                                        headers={"Authorization": f"Bearer {self.token}"})
            self.assertEqual(status, 200, (path, body))

    # --- the CLI ----------------------------------------------------------------------

    def test_cli_finds_ups_token_in_the_working_directory(self):
        """The README's two commands: `porcupine up`, then `porcupine user add` from the
        same directory, with no token flag."""
        addr = f"readme@{DOMAIN}"
        cp = self.cli("user", "add", addr, "--password", "pw")
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertIn(addr, self.cli("user", "list").stdout.split())

    def test_cli_token_file_flag_and_env(self):
        elsewhere = tempfile.mkdtemp(prefix="porcupine-cwd-")
        self.addCleanup(shutil.rmtree, elsewhere, True)
        copy = os.path.join(elsewhere, "tok")
        with open(copy, "w") as f:
            f.write(self.token + "\n")
        os.chmod(copy, 0o600)
        for how, args, env in [
            ("--token-file", ("--token-file", copy), {}),
            ("PORCUPINE_TOKEN_FILE", (), {"PORCUPINE_TOKEN_FILE": copy}),
            ("PORCUPINE_TOKEN", (), {"PORCUPINE_TOKEN": self.token}),
        ]:
            cp = self.cli("status", "--json", *args, env=env, cwd=elsewhere)
            self.assertEqual(cp.returncode, 0, (how, cp.stderr))
            self.assertIn('"epoch"', cp.stdout, how)
        # --token-file wins over the environment's token.
        cp = self.cli("user", "list", "--token-file", copy, env={"PORCUPINE_TOKEN": "bad"}, cwd=elsewhere)
        self.assertEqual(cp.returncode, 0, cp.stderr)

    def test_cli_errors(self):
        elsewhere = tempfile.mkdtemp(prefix="porcupine-cwd-")
        self.addCleanup(shutil.rmtree, elsewhere, True)
        # No token anywhere: says where it looked, before any request.
        cp = self.cli("user", "list", cwd=elsewhere)
        self.assertNotEqual(cp.returncode, 0)
        self.assertIn("no admin token", cp.stderr)
        self.assertIn("--token-file", cp.stderr)
        # A wrong token: the 401 is explained.
        cp = self.cli("user", "add", f"nope@{DOMAIN}", "--password", "pw",
                      env={"PORCUPINE_TOKEN": "wrong"}, cwd=elsewhere)
        self.assertNotEqual(cp.returncode, 0)
        self.assertIn("HTTP 401", cp.stderr)
        self.assertNotIn(f"nope@{DOMAIN}", self.cli("user", "list").stdout.split())
        # A named token file that does not exist.
        cp = self.cli("user", "list", "--token-file", os.path.join(elsewhere, "missing"), cwd=elsewhere)
        self.assertNotEqual(cp.returncode, 0)
        self.assertIn("missing", cp.stderr)
        self.assertNotIn("panicked", cp.stderr)


class ServeTokenRuleTest(unittest.TestCase):
    """`serve` with admin off loopback and no usable token file stops before it binds
    anything (so the test never listens on 0.0.0.0)."""

    def serve(self, *args: str) -> subprocess.CompletedProcess:
        d = tempfile.mkdtemp(prefix="porcupine-rule-")
        self.addCleanup(shutil.rmtree, d, True)
        self.dir = d
        cmd = [str(BINARY), "serve", "--node-id", "0", "--data", os.path.join(d, "data"),
               "--smtp", f"{HOST}:0", "--pop", f"{HOST}:0", "--rpc", f"{HOST}:0", *args]
        start = time.monotonic()
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                            env={**os.environ, "NO_COLOR": "1"})
        self.elapsed = time.monotonic() - start
        return cp

    def test_non_loopback_admin_without_token_file_is_refused(self):
        cp = self.serve("--admin", "0.0.0.0:0")
        self.assertNotEqual(cp.returncode, 0)
        self.assertIn("admin_token_file", cp.stderr)
        self.assertIn("not a loopback address", cp.stderr)
        self.assertNotIn("porcupine node ready", cp.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "data", "admin.token")),
                         "off loopback the token file must be provided, not made")
        self.assertFalse(os.path.exists(os.path.join(self.dir, "data")),
                         "refused before the data dir was even opened")
        self.assertLess(self.elapsed, 10)

    def test_non_loopback_admin_with_readable_or_empty_token_file_is_refused(self):
        d = tempfile.mkdtemp(prefix="porcupine-tok-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "admin.token")
        for content, mode, want in [("a" * 64 + "\n", 0o644, "readable by other users"),
                                    ("a" * 64 + "\n", 0o640, "readable by other users"),
                                    ("\n", 0o600, "is empty")]:
            with open(path, "w") as f:
                f.write(content)
            os.chmod(path, mode)
            cp = self.serve("--admin", "0.0.0.0:0", "--admin-token-file", path)
            self.assertNotEqual(cp.returncode, 0, (oct(mode), content))
            self.assertIn(want, cp.stderr)
            self.assertIn("admin_token_file", cp.stderr)
            self.assertNotIn("porcupine node ready", cp.stderr)


if __name__ == "__main__":
    unittest.main()
