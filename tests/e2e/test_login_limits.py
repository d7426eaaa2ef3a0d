"""POP3 login failure limits per client address and per account (issue 11), and the
structured `auth` log line per failure, which never holds the password.

The node's exemption list is emptied (by default loopback is exempt), so the limits
can be exercised from 127.0.0.1."""

import re
import unittest

from harness import DOMAIN, PopRaw
from serve_proc import ServeNode

PER_IP_MAX = 6
PER_ACCOUNT_MAX = 3
NODE_TOML = f"""
node_id = 7
pop_login_failures_per_ip_max = {PER_IP_MAX}
pop_login_failures_per_account_max = {PER_ACCOUNT_MAX}
pop_login_failure_window_secs = 600
pop_login_failures_exempt = []
pop_auth_failure_delay_ms = 20
"""
LIMITED = b"-ERR [SYS/TEMP] too many login failures, try later"


def try_login(port: int, user: str, password: str) -> bytes:
    """One USER/PASS on a new connection; the answer to PASS."""
    with PopRaw(port) as p:
        p.ok(f"USER {user}")
        return p.cmd(f"PASS {password}")


class LoginLimitTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.node = ServeNode(NODE_TOML).start()
        cls.addClassCleanup(cls.node.cleanup)

    def auth_lines(self) -> list[str]:
        return [l for l in self.node.log().splitlines() if "POP3 login failed" in l]

    def test_limits_per_account_then_per_address_and_the_log(self):
        port = self.node.pop_port
        alice, bob = f"alice@{DOMAIN}", f"bob@{DOMAIN}"
        self.node.add_user(alice, "alice-pw")
        self.node.add_user(bob, "bob-pw")
        secret = "Wr0ng-Secret-Never-Logged"
        # Per account: PER_ACCOUNT_MAX wrong passwords, then even the right one is
        # refused without a password check.
        for _ in range(PER_ACCOUNT_MAX):
            self.assertTrue(try_login(port, alice, secret).startswith(b"-ERR [AUTH]"))
        self.assertEqual(try_login(port, alice, "alice-pw"), LIMITED)
        # Another account from the same address still works (3 failures < 6).
        self.assertTrue(try_login(port, bob, "bob-pw").startswith(b"+OK"))
        # Per address: failures against unknown accounts fill the address's window.
        for i in range(PER_IP_MAX - PER_ACCOUNT_MAX):
            self.assertTrue(try_login(port, f"nobody{i}@{DOMAIN}", secret).startswith(b"-ERR [AUTH]"))
        self.assertEqual(try_login(port, bob, "bob-pw"), LIMITED)
        # AUTH PLAIN is limited the same way.
        with PopRaw(port) as p:
            self.assertEqual(p.auth_plain(bob, "bob-pw"), LIMITED)

        lines = self.auth_lines()
        reasons = [re.search(r'reason="([^"]+)"', l) for l in lines]
        reasons = [m.group(1) if m else None for m in reasons]
        self.assertEqual(reasons.count("bad password"), PER_ACCOUNT_MAX, lines)
        self.assertEqual(reasons.count("unknown user"), PER_IP_MAX - PER_ACCOUNT_MAX, lines)
        self.assertEqual(reasons.count("rate limited"), 3, lines)
        for l in lines:
            self.assertIn("auth:", l)  # the `auth` target
            self.assertIn("peer=127.0.0.1:", l)
            self.assertIn("user=", l)
        self.assertTrue(any(alice in l and 'limit="account"' in l for l in lines), lines)
        self.assertTrue(any(bob in l and 'limit="client address"' in l for l in lines), lines)
        # No password, wrong or right, is ever in the log.
        log = self.node.log()
        for pw in (secret, "alice-pw", "bob-pw"):
            self.assertNotIn(pw, log)


if __name__ == "__main__":
    unittest.main()
