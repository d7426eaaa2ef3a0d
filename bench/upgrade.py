#!/usr/bin/env python3
"""Rolling upgrade under load: a 3-node cluster started with an older porcupine
(default: the previous commit's, built here), upgraded one node at a time to this
tree's target/release/porcupine while `porcupine load --mode send-then-drain` offers
mail to all three; then every acknowledged message must come back byte-exact.

usage: bench/upgrade.py [--from REV | --old BIN] [--new BIN] [--nodes 3]
                        [--rate 100] [--settle-s 8] [--json FILE]

Each node in turn: SIGTERM (sessions answer 421 / -ERR and close, the store flushes),
wait for the exit, start the new binary on the same data directory and ports, wait
until its /readyz answers 200 and every node's view holds all nodes again, settle,
next. Prints a timeline (per step: seconds, replies seen meanwhile) and the load's
report; exits non-zero if any acknowledged message is missing or corrupt.

Building --from REV uses a git worktree under target/upgrade-old-src and its own
target dir target/upgrade-old (a first build takes a release build's time; later
ones are incremental). Not part of the default test run for that reason.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e"))


def build_old(rev: str) -> Path:
    """The release binary of `rev`, built in a worktree of its own."""
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", rev], check=True,
                         capture_output=True, text=True).stdout.strip()
    src = ROOT / "target" / "upgrade-old-src"
    if src.exists():
        subprocess.run(["git", "-C", str(src), "checkout", "-q", "--detach", sha], check=True)
    else:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(src), sha],
                       check=True)
    target = ROOT / "target" / "upgrade-old"
    print(f"building {rev} ({sha[:10]}) in {src} ...", file=sys.stderr, flush=True)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "node", "--bin", "porcupine"],
                   cwd=src, check=True, env={**os.environ, "CARGO_TARGET_DIR": str(target)})
    return target / "release" / "porcupine"


def version_of(binary: Path) -> str:
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True)
    return (out.stdout or out.stderr).strip()


def ready(admin: str) -> bool:
    try:
        with urllib.request.urlopen(f"{admin}/readyz", timeout=3) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def readyz_body(admin: str) -> str:
    """What /readyz says (its reason when not ready)."""
    try:
        with urllib.request.urlopen(f"{admin}/readyz", timeout=3) as r:
            return r.read().decode()
    except urllib.error.HTTPError as e:
        return e.read().decode()
    except (urllib.error.URLError, OSError) as e:
        return str(e)


def safe_status(c, i: int) -> dict:
    """Node i's /v1/cluster, or {} while it does not answer."""
    try:
        return c.status(i, timeout=3)
    except Exception:
        return {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="rev", default="HEAD~1", help="git revision to upgrade from")
    ap.add_argument("--old", type=Path, help="a prebuilt old binary instead of --from")
    ap.add_argument("--new", type=Path, default=ROOT / "target" / "release" / "porcupine")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--rate", type=int, default=100, help="messages/s offered (open loop)")
    ap.add_argument("--settle-s", type=float, default=8, help="seconds between upgraded nodes")
    ap.add_argument("--json", type=Path, help="write the load report and timeline here")
    args = ap.parse_args()

    old = args.old or build_old(args.rev)
    new = args.new
    for b in (old, new):
        if not b.exists():
            sys.exit(f"bench/upgrade: {b} not found")
    os.environ["PORCUPINE_BIN"] = str(old)
    import harness  # noqa: E402  (reads PORCUPINE_BIN at import)

    print(f"old: {version_of(old)} ({old})\nnew: {version_of(new)} ({new})", flush=True)
    c = harness.Cluster(nodes=args.nodes).start()
    try:
        users = 40
        for k in range(users):
            c.add_user(f"u{k}@bench.test", f"pw{k}")
        smtp = [f"--smtp={c.info[i].smtp}" for i in range(args.nodes)]
        pop = [f"--pop={c.info[i].pop}" for i in range(args.nodes)]
        # Long enough to span every node's restart and settle.
        duration = int(args.nodes * (args.settle_s + 15) + 10)
        out = Path(tempfile.mkdtemp(prefix="porcupine-upgrade-")) / "load.json"
        load = subprocess.Popen(
            [str(new), "load", *smtp, *pop, "--users", str(users), "--domain", "bench.test",
             "--mode", "send-then-drain", "--rate", str(args.rate), "--sessions", "6",
             "--messages-per-connection", "20", "--size", "lognormal:4096,1",
             "--duration", f"{duration}s", "--timeout", "20s", "--json", str(out), "--quiet"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: list[str] = []
        pump = threading.Thread(target=lambda: lines.extend(load.stdout), daemon=True)
        pump.start()
        t0 = time.monotonic()
        timeline = []
        time.sleep(args.settle_s)
        for i in range(args.nodes):
            step = {"node": i}
            pid = c.info[i].pid
            t_stop = time.monotonic()
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 40
            while harness._pid_running(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if harness._pid_running(pid):
                raise SystemExit(f"node {i} still running 40 s after SIGTERM")
            step["stop_s"] = round(time.monotonic() - t_stop, 2)
            own = c.restarted.pop(i, None)
            if own is not None:
                own.wait(timeout=5)
            c.info[i].command[0] = str(new)
            t_start = time.monotonic()
            c.restart_node(i)
            while not ready(c.admin_url(i)):
                if time.monotonic() - t_start > 60:
                    raise SystemExit(f"node {i} not ready 60 s after the upgrade: "
                                     f"{readyz_body(c.admin_url(i))}")
                time.sleep(0.2)
            step["ready_s"] = round(time.monotonic() - t_start, 2)
            # Every node sees every node again.
            while True:
                live = [sorted((safe_status(c, k)).get("live", []))
                        for k in range(args.nodes)]
                if all(v == list(range(args.nodes)) for v in live):
                    break
                if time.monotonic() - t_start > 60:
                    raise SystemExit(f"views did not converge after node {i}: {live}")
                time.sleep(0.2)
            step["converged_s"] = round(time.monotonic() - t_start, 2)
            step["at_s"] = round(t_stop - t0, 1)
            timeline.append(step)
            print(f"node {i}: stopped in {step['stop_s']} s at t={step['at_s']} s, new binary "
                  f"ready {step['ready_s']} s later, views whole at {step['converged_s']} s",
                  flush=True)
            time.sleep(args.settle_s)
        rc = load.wait(timeout=duration + 600)
        pump.join(5)
        print("".join(lines), end="")
        report = json.loads(out.read_text())
        versions = {i: ((safe_status(c, i)).get("version") or {}).get("release")
                    for i in range(args.nodes)}
        lost = report.get("missing", 0) + report.get("corrupt", 0)
        print(f"\nupgrade: {args.nodes} nodes one at a time, acknowledged "
              f"{report.get('acknowledged')}, temp_failed {report.get('temp_failed')}, "
              f"errors {len(report.get('errors') or [])}, missing {report.get('missing')}, corrupt "
              f"{report.get('corrupt')}; versions after: {versions}; load exit {rc}")
        if args.json:
            args.json.write_text(json.dumps({"timeline": timeline, "load": report,
                                             "versions": versions}, indent=2))
        return 0 if lost == 0 and report.get("acknowledged", 0) > 0 else 1
    finally:
        c.cleanup()


if __name__ == "__main__":
    sys.exit(main())
