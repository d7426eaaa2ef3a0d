"""`porcupine load` against a real `porcupine up`: send-then-drain with every message
checked end to end (acknowledged = retrieved, nothing corrupt or missing), the mixed
mode with PIPELINING, a failing drain, and `--calibrate-out` read back by the simulator.
All traffic goes to the cluster this test starts on 127.0.0.1."""

import json
import os
import shutil
import subprocess
import tempfile
import unittest

import harness
from harness import HOST

DOMAIN = "load.test"
USERS = [(f"u{i}@{DOMAIN}", f"pw{i}") for i in range(10)]
RUN_TIMEOUT_S = 180


class LoadTest(unittest.TestCase):
    cluster: harness.Cluster

    @classmethod
    def setUpClass(cls):
        cls.cluster = harness.Cluster(nodes=1).start()
        cls.addClassCleanup(cls.cluster.cleanup)
        cls.cluster.add_users(USERS)
        cls.cluster.wait_users_known([a for a, _ in USERS])
        cls.cluster.wait_ready_for_pop(*USERS[0])
        cls.tmp = tempfile.mkdtemp(prefix="porcupine-load-e2e-")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)

    def load(self, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
        """Run `porcupine load` against the cluster; (process, decoded --json report)."""
        out = os.path.join(self.tmp, f"{self.id().rsplit('.', 1)[1]}.json")
        cmd = [
            str(harness.BINARY), "load",
            "--smtp", f"{HOST}:{self.cluster.smtp_port()}",
            "--pop", f"{HOST}:{self.cluster.pop_port()}",
            "--json", out, *args,
        ]
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                            stdin=subprocess.DEVNULL)
        with open(out) as f:
            return cp, json.load(f)

    def test_send_then_drain_checks_every_message(self):
        cal = os.path.join(self.tmp, "calibrate.json")
        cp, r = self.load("--users", "10", "--domain", DOMAIN, "--messages", "200",
                          "--sessions", "4", "--mode", "send-then-drain",
                          "--calibrate-out", cal)
        self.assertEqual(cp.returncode, 0, cp.stdout + cp.stderr)
        self.assertIn("integrity: ok", cp.stdout)
        self.assertEqual(r["sent"], 200)
        self.assertEqual(r["acknowledged"], 200)
        self.assertEqual(r["retrieved"], 200)
        self.assertEqual((r["corrupt"], r["missing"], r["duplicate"]), (0, 0, 0))
        self.assertGreater(r["smtp"]["msgs_per_s"], 0)
        self.assertGreater(r["smtp"]["latency_ms"]["p99"], 0)
        self.assertGreater(r["pop"]["msgs_per_s"], 0)
        self.assertGreaterEqual(r["smtp"]["latency_ms"]["p99"], r["smtp"]["latency_ms"]["p50"])
        # The simulator takes the estimates as its hardware model.
        with open(cal) as f:
            model = json.load(f)
        for key in ("cores", "smtp_cpu_us", "fsync_us", "pop_cpu_us", "notes"):
            self.assertIn(key, model)
        sim = subprocess.run([str(harness.BINARY), "sim", "run", "--nodes", "1", "--users", "10",
                              "--rate", "50", "--duration", "2s", "--calibrate", cal],
                             capture_output=True, text=True, timeout=120)
        self.assertEqual(sim.returncode, 0, sim.stdout + sim.stderr)

    def test_mixed_with_pipelining(self):
        cp, r = self.load("--users", "10", "--domain", DOMAIN, "--duration", "2s",
                          "--sessions", "4", "--pop-sessions", "2", "--pipelining",
                          "--mode", "mixed", "--size", "lognormal:3000,1")
        self.assertEqual(cp.returncode, 0, cp.stdout + cp.stderr)
        self.assertGreater(r["acknowledged"], 0)
        self.assertEqual(r["retrieved"], r["acknowledged"] + r["other_run"] + r["unmarked"])
        self.assertEqual((r["corrupt"], r["missing"], r["duplicate"]), (0, 0, 0))

    def test_a_drain_that_cannot_log_in_fails(self):
        users = os.path.join(self.tmp, "users.txt")
        with open(users, "w") as f:
            f.write(f"# wrong password\nu1@{DOMAIN} not-pw1\n")
        cp, r = self.load("--user-file", users, "--mode", "drain", "--timeout", "10s")
        self.assertNotEqual(cp.returncode, 0)
        self.assertEqual(r["pop_errors"], 1)
        self.assertIn("POP3 session(s) failed", cp.stderr)


if __name__ == "__main__":
    unittest.main()
