#!/usr/bin/env python3
"""bench/compaction: delivery throughput with and without segment compaction running,
and compaction speed, in one run.

Starts `porcupine up` (1 node, background compaction off, `--segment-size-mb`
segments, compaction capped at `--rate-mb` MiB/s) in a temp data dir, then:
  1. preloads about --preload-mb of --size-kb messages for one user and deletes nine
     in ten over POP3 (the dead data compaction will reclaim);
  2. delivers to another user for --seconds with --workers SMTP sessions: msgs/s
     without compaction;
  3. starts one compaction pass (`porcupine node compact`) and delivers the same way
     while it runs: msgs/s with compaction, and the pass's MB/s (bytes read / time).
Prints segment bytes before/after, both throughputs and their ratio.
Usage: bench/compaction.py [--preload-mb M] [--size-kb K] [--rate-mb R] [--seconds S]
"""

import argparse
import os
import re
import smtplib
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "e2e"))
import harness  # noqa: E402  (free ports, token-aware admin calls)

DOMAIN = harness.DOMAIN
PASSWORD = "bench-pw"


def message(tag: str, i: int, size: int) -> bytes:
    line = (f"{tag} {i} ".encode() + b"x" * 76)[:76] + b"\r\n"
    return f"Subject: {tag} {i}\r\n\r\n".encode() + line * max(1, size // len(line))


def deliver_while(keep_going, workers: int, user: str, size: int, port: int) -> tuple[int, float, int]:
    """Deliver from `workers` sessions while keep_going(); returns (messages, seconds, errors)."""
    counts = [0] * workers
    errors = [0] * workers

    def loop(w):
        with smtplib.SMTP(harness.HOST, port, timeout=60) as s:
            i = 0
            while keep_going():
                try:
                    s.sendmail("bench@client.test", [user], message(f"w{w}", i, size))
                    counts[w] += 1
                except smtplib.SMTPException:
                    errors[w] += 1
                i += 1
    threads = [threading.Thread(target=loop, args=(w,)) for w in range(workers)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts), time.monotonic() - start, sum(errors)


def segment_bytes(data: str) -> int:
    d = os.path.join(data, "node-0", "segments")
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".seg"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preload-mb", type=int, default=150)
    ap.add_argument("--size-kb", type=int, default=100)
    ap.add_argument("--delivery-kb", type=int, default=10)
    ap.add_argument("--rate-mb", type=int, default=32, help="compaction cap, MiB/s (0: none)")
    ap.add_argument("--segment-size-mb", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--workers", type=int, default=4)
    args = ap.parse_args()

    conf_dir = tempfile.mkdtemp(prefix="porcupine-bench-compaction-")
    conf = os.path.join(conf_dir, "node.toml")
    with open(conf, "w") as f:
        f.write(f"segment_size_mb = {args.segment_size_mb}\ncompact_live_ratio_min = 0\n"
                f"compact_rate_mb_per_sec = {args.rate_mb}\ndisk_reserve_mb = 0\n")
    c = harness.Cluster(nodes=1, up_args=("--node-config", conf)).start()
    try:
        old, new = f"old@{DOMAIN}", f"new@{DOMAIN}"
        c.add_users([(old, PASSWORD), (new, PASSWORD)])
        size = args.size_kb * 1024
        count = args.preload_mb * 1024 * 1024 // size
        print(f"preloading {count} messages of {args.size_kb} KiB for {old} ...", flush=True)
        done = [0]
        lock = threading.Lock()

        def preload_left():
            with lock:
                done[0] += 1
                return done[0] <= count
        n, secs, errs = deliver_while(preload_left, args.workers, old, size, c.smtp_port())
        print(f"  {n} stored in {secs:.1f} s ({n / secs:.1f} msgs/s, {n * size / secs / 1e6:.1f} MB/s), {errs} errors")
        p = harness.pop_session(c.pop_port(), old, PASSWORD, timeout_s=30)
        numbers = sorted(p.listing())
        for k, num in enumerate(numbers):
            if k % 10 != 0:
                p.ok(f"DELE {num}")
        p.quit()
        p.close()
        before = segment_bytes(c.data)
        print(f"deleted {len(numbers) - len(numbers[::10])} of {len(numbers)}; segment bytes {before}")

        stop_at = time.monotonic() + args.seconds
        n0, s0, e0 = deliver_while(lambda: time.monotonic() < stop_at, args.workers, new,
                                   args.delivery_kb * 1024, c.smtp_port())
        base = n0 / s0
        print(f"without compaction: {n0} msgs in {s0:.1f} s = {base:.1f} msgs/s ({e0} errors)")

        result = {}

        def compact():
            t = time.monotonic()
            cp = harness.run_cli("node", "compact", "--live-ratio-min", "0.5",
                                 admin=c.admin_url(0), timeout=3600)
            result["wall_s"] = time.monotonic() - t
            result["out"] = cp.stdout.strip()
        ct = threading.Thread(target=compact)
        ct.start()
        n1, s1, e1 = deliver_while(ct.is_alive, args.workers, new, args.delivery_kb * 1024, c.smtp_port())
        ct.join()
        during = n1 / s1 if s1 > 0 else 0.0
        after = segment_bytes(c.data)
        print(f"with compaction:    {n1} msgs in {s1:.1f} s = {during:.1f} msgs/s ({e1} errors)")
        print(f"  {result.get('out')}")
        m = re.search(r"read (\d+) bytes, copied (\d+) bytes, removed (\d+) bytes in (\d+) ms", result.get("out", ""))
        if m:
            read, copied, removed, ms = (int(g) for g in m.groups())
            print(f"compaction: read {read / 1e6:.1f} MB, copied {copied / 1e6:.1f} MB, removed "
                  f"{removed / 1e6:.1f} MB in {ms / 1000:.2f} s = {read / 1e6 / max(ms, 1) * 1000:.1f} MB/s read "
                  f"(cap {args.rate_mb} MiB/s)")
        print(f"segment bytes before {before} after {after} ({after / before:.2f} of before)")
        print(f"throughput during compaction / without: {during / base:.2f}")
    finally:
        c.stop()
        c.cleanup()


if __name__ == "__main__":
    main()
