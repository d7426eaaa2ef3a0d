#!/usr/bin/env python3
"""bench/tls: plain vs TLS throughput on one `porcupine up` node, in one run.

Starts `porcupine up` (1 node) on free ports in a temp data dir, adds USERS accounts,
then measures with Python's smtplib/poplib (the same client code both ways, so the
ratio is the server's and the TLS cost's, not the client's):
  SMTP: messages/s with a new session per message, plain vs STARTTLS;
  POP3: login+STAT+QUIT sessions/s, plain vs STLS vs POP3S.
Prints figures and TLS/plain ratios.  Usage: bench/tls.py [--seconds S] [--workers W]
"""

import argparse
import os
import poplib
import shutil
import smtplib
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "e2e"))
import harness  # noqa: E402  (free ports, token-aware admin calls)

MSG = b"Subject: bench\r\n\r\n" + (b"x" * 78 + b"\r\n") * 25


def run_for(seconds: float, workers: int, job) -> float:
    stop = time.monotonic() + seconds
    counts = [0] * workers
    errors = []

    def loop(i):
        while time.monotonic() < stop:
            try:
                job(i)
                counts[i] += 1
            except Exception as e:  # noqa: BLE001 - a bench reports, it does not stop
                errors.append(repr(e))
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(workers)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    if errors:
        print(f"  ({len(errors)} errors, first: {errors[0]})")
    return sum(counts) / elapsed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--workers", type=int, default=8)
    args = ap.parse_args()
    cluster = harness.Cluster(nodes=1).start()
    try:
        users = [(f"b{i}@bench.test", f"pw-bench-{i}") for i in range(args.workers)]
        cluster.add_users(users)
        ctx = ssl.create_default_context(cafile=cluster.tls_ca())
        smtp_port, pop_port, pop3s_port = cluster.smtp_port(), cluster.pop_port(), cluster.pop3s_port()

        def smtp_job(tls):
            def job(i):
                with smtplib.SMTP(harness.HOST, smtp_port, timeout=30) as s:
                    s.ehlo("bench.test")
                    if tls:
                        s.starttls(context=ctx)
                        s.ehlo("bench.test")
                    s.sendmail("s@elsewhere.test", [users[i][0]], MSG)
            return job

        def pop_job(mode):
            def job(i):
                if mode == "pop3s":
                    p = poplib.POP3_SSL(harness.HOST, pop3s_port, context=ctx, timeout=30)
                else:
                    p = poplib.POP3(harness.HOST, pop_port, timeout=30)
                    if mode == "stls":
                        p.stls(context=ctx)
                p.user(users[i][0])
                p.pass_(users[i][1])
                p.stat()
                p.quit()
            return job

        results = {}
        for name, job in [("smtp plain", smtp_job(False)), ("smtp STARTTLS", smtp_job(True)),
                          ("pop3 plain", pop_job("plain")), ("pop3 STLS", pop_job("stls")),
                          ("pop3s", pop_job("pop3s"))]:
            rate = run_for(args.seconds, args.workers, job)
            results[name] = rate
            print(f"{name:14} {rate:9.1f} /s  ({args.workers} workers, {args.seconds:.0f} s)")
        print(f"ratio STARTTLS/plain (SMTP messages/s, one session each): "
              f"{results['smtp STARTTLS'] / results['smtp plain']:.2f}")
        print(f"ratio STLS/plain (POP3 sessions/s): {results['pop3 STLS'] / results['pop3 plain']:.2f}")
        print(f"ratio POP3S/plain (POP3 sessions/s): {results['pop3s'] / results['pop3 plain']:.2f}")
    finally:
        cluster.stop()
        cluster.cleanup()


if __name__ == "__main__":
    main()
