#!/usr/bin/env bash
# Smoke / bench run of every cargo-fuzz target: `fuzz/run.sh SECONDS [TARGET...]`.
# Builds once (nightly, no sanitizer: the crates are safe Rust, so ASan would only
# slow the runs), then runs each target for SECONDS on the seed
# corpus in fuzz/corpus/<target> (read only: new inputs go to
# fuzz/target/corpus-work/<target>), and prints execs and coverage per target.
# Exit status: non-zero if any target found a crash (kept in fuzz/artifacts/<target>).
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-10}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
cargo +nightly fuzz build -s none
printf '%-22s %12s %10s %8s %8s %s\n' target execs execs/s cov ft result
failed=0
for t in "${targets[@]}"; do
    work="target/corpus-work/$t"
    mkdir -p "$work" "corpus/$t" "artifacts/$t"
    log="target/fuzz-$t.log"
    rc=0
    cargo +nightly fuzz run -s none "$t" "$work" "corpus/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        >"$log" 2>&1 || rc=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n1 || true)
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n1 || true)
    last=$(grep -E '^#[0-9]+' "$log" | tail -n1 || true)
    cov=$(echo "$last" | grep -o 'cov: [0-9]*' | grep -o '[0-9]*' || true)
    ft=$(echo "$last" | grep -o 'ft: [0-9]*' | grep -o '[0-9]*' || true)
    result=ok
    if [ "$rc" -ne 0 ]; then
        result="CRASH (rc $rc, see fuzz/$log)"
        failed=1
    fi
    printf '%-22s %12s %10s %8s %8s %s\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "$result"
done
exit "$failed"
