"""A delete made while the other replica is down, in a two-node cluster (R = 2).

The node that recorded the delete ends up holding only tombstones for the user; it must
stay in the user's mail map, or the returning replica (which still has the messages)
would bring them back in listings, and repair would copy them around again.
"""

import time
import unittest

import faults
import harness

USER, PW = f"dora@{harness.DOMAIN}", "pw-dora"


class DeleteWithTwoNodes(unittest.TestCase):
    def setUp(self):
        harness.require_binary()
        # Repair passes every 5 s (default 30): the test waits for the pass after the
        # return within 20 s, and the first pass may find the returned node's report
        # not yet in and leave the work to the next one.
        self.cluster = harness.Cluster(nodes=2, up_args=("--repair-interval-secs", "5")).start()
        self.addCleanup(self.cluster.cleanup)
        self.cluster.add_user(USER, PW)
        faults.wait_users_known(self.cluster, [0, 1], [USER])

    def stat(self, node: int) -> int:
        p = harness.pop_session(self.cluster.pop_port(node), USER, PW, timeout_s=30)
        try:
            return len(p.listing())
        finally:
            p.quit()

    def test_delete_while_replica_down_stays_deleted(self):
        for k in range(3):
            r = harness.deliver(self.cluster.smtp_port(0), USER, harness.make_message(f"m{k}"))
            self.assertEqual(r.code, 250, r.text)
        box = faults.mailbox(self.cluster, 0, USER)
        self.assertEqual(sorted(len(h) for h in faults.holders_by_id(box).values()), [2, 2, 2])

        self.cluster.kill_node(1)
        faults.wait_view(self.cluster, [0], 15)
        p = harness.pop_session(self.cluster.pop_port(0), USER, PW, timeout_s=30)
        n = len(p.listing())
        self.assertEqual(n, 3)
        for k in range(1, n + 1):
            p.ok(f"DELE {k}")
        p.quit()
        self.assertEqual(self.stat(0), 0)

        self.cluster.restart_node(1)
        faults.wait_view(self.cluster, [0, 1], 20)
        for node in (0, 1):
            self.assertEqual(self.stat(node), 0, f"deleted mail came back via node {node}")
        # After the repair pass that follows the view change the returned replica
        # holds the tombstones too, and nothing was copied anywhere.
        deadline = time.monotonic() + 20
        while True:
            sums = faults.repair_sums(self.cluster, [0, 1])
            st = self.cluster.status(1)
            if st["fragments"]["messages"] == 0:
                break
            self.assertLess(time.monotonic(), deadline, f"node 1 still holds live copies: {st['fragments']}")
            time.sleep(0.5)
        self.assertEqual(sums.get("copies_made_total", 0), 0, sums)
        for node in (0, 1):
            self.assertEqual(self.stat(node), 0)


if __name__ == "__main__":
    unittest.main()
