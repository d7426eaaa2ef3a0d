#!/usr/bin/env python3
"""bench/quota_rcpt: what a quota costs at RCPT, in one run.

Starts `porcupine up --nodes 3` through tests/e2e/harness.py (free ports, temp data
dir), adds `free@m.test` (no quota) and `capped@m.test` (a message quota, so every
RCPT reads its usage: mail map from the manager, then a listing from every fragment
node), gives each 20 messages (2 copies each), then times RCPT TO on one SMTP session
per account, alternating twice. Prints median and p99 per account.
Usage: bench/quota_rcpt.py [--rcpts N]   (needs target/release/porcupine)
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "e2e"))
import harness  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rcpts", type=int, default=300)
    args = ap.parse_args()
    c = harness.Cluster(nodes=3).start()
    try:
        admin = c.admin_url()
        harness.run_cli("user", "add", "free@m.test", "--password", "pw", admin=admin)
        harness.run_cli("user", "add", "capped@m.test", "--password", "pw",
                        "--quota-messages", "100000", admin=admin)
        c.wait_users_known(["free@m.test", "capped@m.test"])
        for user in ["free@m.test", "capped@m.test"]:
            for k in range(20):
                r = harness.deliver(c.smtp_port(), user, harness.make_message(f"m{k}"))
                assert r.code == 250, r
        for user in ["free@m.test", "capped@m.test"] * 2:
            with harness.SmtpRaw(c.smtp_port()) as s:
                s.cmd("EHLO bench.test")
                s.cmd("MAIL FROM:<x@elsewhere.test>")
                lat = []
                for _ in range(args.rcpts):
                    t = time.perf_counter()
                    r = s.cmd(f"RCPT TO:<{user}>")
                    lat.append(time.perf_counter() - t)
                    assert r.code == 250, r
                    s.cmd("RSET")
                    s.cmd("MAIL FROM:<x@elsewhere.test>")
            lat.sort()
            print(f"{user:15} RCPT median {statistics.median(lat) * 1e3:.2f} ms, "
                  f"p99 {lat[int(len(lat) * 0.99)] * 1e3:.2f} ms ({args.rcpts} RCPTs)")
    finally:
        c.cleanup()


if __name__ == "__main__":
    main()
