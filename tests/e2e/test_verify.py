"""`porcupine node verify [--repair]` (issue 14): a byte flipped in a stored message on
one node's disk is reported with its file offset and message, `--repair` replaces it
from the other node's copy, and the message reads back byte-exact afterwards."""

from __future__ import annotations

import glob
import os
import unittest

from harness import DOMAIN, Cluster, deliver, fetch_all, run_cli, split_trace

PASSWORD = "pw-verify"


class VerifyTest(unittest.TestCase):
    def test_a_flipped_byte_is_found_and_repaired_from_the_replica(self):
        c = Cluster(nodes=2).start()
        self.addCleanup(c.cleanup)
        user = f"fsck@{DOMAIN}"
        c.add_users([(user, PASSWORD)])
        c.wait_users_known([user])
        marker = b"VERIFY-MARKER-0123456789"
        bodies = []
        for i in range(5):
            body = (f"Subject: fsck {i}\r\n\r\n".encode()
                    + (marker if i == 2 else b"plain") + b" body line\r\n" * 20)
            self.assertEqual(deliver(c.smtp_port(), user, body).code, 250)
            bodies.append(body)
        out = run_cli("node", "verify", admin=c.admin_url(0)).stdout
        self.assertIn("0 damaged records, 0 of them live messages", out)

        # Flip one byte of message 2's body on node 0's disk.
        hits = []
        for path in glob.glob(os.path.join(c.data, "node-0", "segments", "*.seg")):
            with open(path, "rb") as f:
                data = f.read()
            at = data.find(marker)
            if at >= 0:
                hits.append((path, at))
        self.assertEqual(len(hits), 1, hits)
        path, at = hits[0]
        with open(path, "r+b") as f:
            f.seek(at + 3)
            b = f.read(1)
            f.seek(at + 3)
            f.write(bytes([b[0] ^ 0x20]))

        cp = run_cli("node", "verify", admin=c.admin_url(0), check=False)
        self.assertNotEqual(cp.returncode, 0, cp.stdout)
        self.assertIn("1 damaged records, 1 of them live messages", cp.stdout)
        self.assertIn("checksum mismatch", cp.stdout)
        self.assertIn(user, cp.stdout)
        # Node 1's copy is intact.
        self.assertIn("0 damaged records", run_cli("node", "verify", admin=c.admin_url(1)).stdout)
        # The damage is reported with its file offset.

        out = run_cli("node", "verify", "--repair", admin=c.admin_url(0)).stdout
        self.assertIn("repaired 1 from replicas, 0 not repaired", out)
        # The damaged record is now unused (the repaired copy is elsewhere in the log).
        out = run_cli("node", "verify", admin=c.admin_url(0)).stdout
        self.assertIn("1 damaged records, 0 of them live messages", out)
        got = sorted(split_trace(raw)[1] for _, _, raw in fetch_all(c.pop_port(0), user, PASSWORD))
        self.assertEqual(got, sorted(bodies))


if __name__ == "__main__":
    unittest.main()
