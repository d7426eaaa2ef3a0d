#!/usr/bin/env bash
# Shared by bench/run and bench/load (sourced, not run): start and stop a local
# `porcupine up` cluster on free ports and create the bench accounts u0..u{USERS-1}@DOM.
# The caller sets BIN, K (nodes), R (replicas, may be empty), DATA, USERS, DOM; the
# functions set BASE, UP_PID, SMTP_PORTS, POP_PORTS, ADMINS.

log() { echo "bench: $*" >&2; }
join() { local IFS=,; echo "$*"; }

# A base port P with P+10i+{0,1,2,3,4} free for every node i; `up` checks again and
# fails cleanly if something took one in between, so a retry covers the race.
free_base() {
  python3 - "$K" <<'PY'
import random, socket, sys
k = int(sys.argv[1])
for _ in range(200):
    base = random.randrange(20000, 32000 - 10 * k, 10)  # below the ephemeral port range
    socks = []
    try:
        for i in range(k):
            for j in range(5):
                s = socket.socket(); s.bind(("127.0.0.1", base + 10 * i + j)); socks.append(s)
        print(base); break
    except OSError:
        pass
    finally:
        for s in socks: s.close()
else:
    sys.exit("no free port range found")
PY
}

UP_PID=""
# Stop the cluster started by porcupine_start (SIGTERM to `up`, which stops every node).
stop_cluster() {
  if [ -n "$UP_PID" ] && kill -0 "$UP_PID" 2>/dev/null; then
    kill -TERM "$UP_PID"
    # `up` forwards SIGTERM to every node and waits up to 20 s for each.
    wait "$UP_PID" 2>/dev/null || true
  fi
  UP_PID=""
}

# Start `porcupine up --nodes K` on a free base port with data in DATA (retried when a
# port was taken in between); logs to DATA/up.out.
porcupine_start() {
  for attempt in 1 2 3; do
    BASE=$(free_base)
    "$BIN" up --nodes "$K" ${R:+--replicas "$R"} --base-port "$BASE" --data "$DATA" > "$DATA/up.out" 2>&1 &
    UP_PID=$!
    for _ in $(seq 1 900); do
      grep -q 'node(s) up' "$DATA/up.out" && break
      kill -0 "$UP_PID" 2>/dev/null || break
      sleep 0.1
    done
    grep -q 'node(s) up' "$DATA/up.out" && break
    log "porcupine up did not come up (attempt $attempt):"; sed 's/^/  /' "$DATA/up.out" >&2
    stop_cluster
    grep -q 'is not available' "$DATA/up.out" || return 1
  done
  grep -q 'node(s) up' "$DATA/up.out" || return 1
  # The admin API wants the token `up` wrote into the data dir.
  AUTH="Authorization: Bearer $(cat "$DATA/admin.token")"
  SMTP_PORTS=(); POP_PORTS=(); ADMINS=()
  for i in $(seq 0 $((K-1))); do
    SMTP_PORTS+=($((BASE + 10*i))); POP_PORTS+=($((BASE + 10*i + 1))); ADMINS+=("http://127.0.0.1:$((BASE + 10*i + 2))")
  done
  log "$K node(s) up on base port $BASE (pid $UP_PID), data $DATA; load average $(cut -d" " -f1-3 /proc/loadavg)"
}

# Create the accounts through node 0's admin API and wait until every node lists them.
porcupine_accounts() {
  t0=$(date +%s.%N)
  codes=$(seq 0 $((USERS-1)) | xargs -P 8 -I{} curl -s -H "$AUTH" -o /dev/null -w '%{http_code}\n' \
    -X POST "${ADMINS[0]}/v1/users" -H 'content-type: application/json' \
    -d '{"address":"u{}@'"$DOM"'","password":"pw{}"}')
  created=$(grep -c '^201$' <<< "$codes" || true)
  if [ "$created" -ne "$USERS" ]; then
    log "only $created of $USERS accounts created; status codes: $(sort <<< "$codes" | uniq -c | tr '\n' ' ')"
    return 1
  fi
  # Every node must have the accounts in its local registry replica before it takes mail.
  for a in "${ADMINS[@]}"; do
    for _ in $(seq 1 300); do
      n=$(curl -s -H "$AUTH" "$a/v1/users" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["users"]))' 2>/dev/null || echo 0)
      [ "$n" -ge "$USERS" ] && break; sleep 0.1
    done
    [ "$n" -ge "$USERS" ] || { log "$a lists $n of $USERS accounts after 30 s"; return 1; }
  done
  log "$USERS accounts created and replicated in $(python3 -c "print(f'{$(date +%s.%N)-$t0:.1f}')") s"
}

# Copies on disk over all nodes, from each node's /v1/cluster.
stored_copies() {
  local sum=0 a m
  for a in "${ADMINS[@]}"; do
    m=$(curl -s -H "$AUTH" "$a/v1/cluster" | python3 -c 'import json,sys; print(json.load(sys.stdin)["fragments"]["messages"])' 2>/dev/null || echo "?")
    [ "$m" = "?" ] && { echo "?"; return; }
    sum=$((sum + m))
  done
  echo "$sum"
}
