#!/bin/bash
# A/B of transaction throughput next to plain puts, two source trees alternating.
#
#   bench/txn_ab.sh OLD_TREE NEW_TREE [ROUNDS]
#
# A tree is a checkout of minikv (e.g. `git archive <rev> | tar -x -C /tmp/old`); both run
# with this checkout's .venv. Each round starts a fresh 3-node local cluster per tree (its own
# MINIKV_HOME under /tmp), runs put, txn (2 keys on 2 shards) and txn1 (one shard) with 16
# clients for 8 s each, and stops it. Prints: tree workload ops/s p50_ms errors.
set -euo pipefail
old=${1:?old tree}; new=${2:?new tree}; rounds=${3:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
run() {
  local tree=$1 name=$2
  export MINIKV_HOME
  MINIKV_HOME=$(mktemp -d /tmp/minikv-ab-XXXXXX)
  trap 'PYTHONPATH=$tree "$here/.venv/bin/minikv" cluster down ab >/dev/null 2>&1 || true; rm -rf "$MINIKV_HOME"' RETURN
  PYTHONPATH=$tree "$here/.venv/bin/minikv" cluster up --name ab >/dev/null
  for workload in put txn txn1; do
    PYTHONPATH=$tree "$here/.venv/bin/minikv" bench --cluster ab --workload "$workload" \
      --clients 16 --duration 8 --json |
      "$here/.venv/bin/python" -c "import json, sys; d = json.load(sys.stdin); \
print('$name', '$workload', round(d['ops_per_s']), d['p50_ms'], d['errors'])"
  done
}
for _ in $(seq "$rounds"); do
  run "$old" old
  run "$new" new
done
