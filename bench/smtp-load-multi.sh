#!/usr/bin/env bash
# smtp-load.sh spread over several SMTP ports: the same load (MESSAGES messages of BYTES
# bytes to users u0..u{USERS-1}@DOMAIN, SESSIONS parallel Postfix smtp-source clients,
# one smtp-source run per user), but user i is sent to port PORTS[i mod K], so a K-node
# cluster takes mail on every node, round robin. Prints '<messages> <seconds>'.
# usage: smtp-load-multi.sh PORT[,PORT...] DOMAIN MESSAGES SESSIONS BYTES [USERS]
set -euo pipefail
IFS=, read -r -a PORTS <<< "$1"; DOM=$2; N=$3; S=$4; L=$5; USERS=${6:-100}
K=${#PORTS[@]}
per=$((N / USERS))
t0=$(date +%s.%N)
for i in $(seq 0 $((USERS-1))); do echo "u$i ${PORTS[$((i % K))]}"; done |
  xargs -P "$S" -L 1 sh -c 'exec smtp-source -m "$0" -l "$1" -s 1 -f sender@load.test -t "$3@$2" "127.0.0.1:$4"' "$per" "$L" "$DOM"
t1=$(date +%s.%N)
python3 -c "print($per*$USERS, $t1-$t0)"
