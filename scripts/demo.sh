#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine as root: set up, bring up a 2-node lab (etcd, Hubble
# Relay, Hubble UI), deploy a three-tier app with its policies, send traffic (allowed and denied),
# narrow the api to some HTTP calls (L7 proxy) and show HTTP flows with and without the proxy, run
# the connectivity test, and print where the relay and the UI listen.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/setup.sh"
cd "$here"
export TENDRIL_LAB=${TENDRIL_LAB:-tendril}
RELAY_PORT=${RELAY_PORT:-4245}
UI_PORT=${UI_PORT:-12000}

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

wait_running() {  # namespace: prints progress until every pod of it runs
  local ns=$1 ready
  for _ in $(seq 1 150); do
    ready=$(tendril get pods -n "$ns" -o json | python3 -c 'import json,sys; p=json.load(sys.stdin)["items"]; print(sum(i["status"]["phase"]=="Running" for i in p), len(p))')
    printf '\r⏳ pods running in %s: %s/%s ' "$ns" "${ready% *}" "${ready#* }"
    [ "${ready% *}" = "${ready#* }" ] && [ "${ready% *}" != 0 ] && { echo; return 0; }
    sleep 0.2
  done
  echo; echo "pods of $ns did not all start" >&2; return 1
}

pod_of() {  # namespace app-label: the first pod of that app
  tendril get pods -n "$1" -o json | python3 -c "
import json,sys
print(next(i['metadata']['name'] for i in json.load(sys.stdin)['items'] if i['metadata']['labels'].get('app') == '$2'))"
}

try() {  # label command...: run a request, print its outcome without stopping the demo
  local label=$1; shift
  if out=$("$@" 2>&1); then printf '  ✅ %-34s %s\n' "$label" "$out"; else printf '  🚫 %-34s %s\n' "$label" "${out##*$'\n'}"; fi
}

step "tendril lab up --nodes 2 (etcd, one agent per node, Hubble Relay :$RELAY_PORT, Hubble UI :$UI_PORT)"
tendril lab up --nodes 2 --relay-port "$RELAY_PORT" --ui-port "$UI_PORT"
step "tendril status --wait"
tendril status --wait --wait-duration 120

step "tendril apply -f examples/shop.yaml (loadgen -> frontend -> api -> db, a policy per tier)"
tendril apply -f examples/shop.yaml
wait_running shop
tendril get pods -n shop -o wide

step "traffic through the tiers (by service name, resolved by the cluster DNS, across nodes)"
frontend=$(pod_of shop frontend); api=$(pod_of shop api)
curl_fmt='%{remote_ip}:%{remote_port} = %{http_code}\n'
for _ in 1 2 3; do
  try "loadgen -> frontend" tendril exec -n shop loadgen -- tendril workload curl -s -w "$curl_fmt" http://frontend/
  try "frontend -> api" tendril exec -n shop "$frontend" -- tendril workload curl -s -w "$curl_fmt" http://api/
  try "api -> db" tendril exec -n shop "$api" -- tendril workload curl -s -w "$curl_fmt" http://db:5432/
done
try "intruder -> api (policy: denied)" tendril exec -n shop intruder -- tendril workload curl -s --connect-timeout 1 -w "$curl_fmt" http://api/
try "intruder -> db (policy: denied)" tendril exec -n shop intruder -- tendril workload curl -s --connect-timeout 1 -w "$curl_fmt" http://db:5432/

step "tendril hubble observe --server localhost:$RELAY_PORT (both nodes, merged by Hubble Relay)"
sleep 0.5
tendril hubble observe --server "localhost:$RELAY_PORT" -n shop --last 8 --type drop
tendril hubble observe --server "localhost:$RELAY_PORT" -n shop --last 12 --protocol tcp --to-port 5432
tendril hubble list nodes --server "localhost:$RELAY_PORT"

step "L7: tendril apply -f examples/shop-l7.yaml (the api answers GET / and GET /products... only)"
tendril apply -f examples/shop-l7.yaml
try "frontend -> GET api/products/42" tendril exec -n shop "$frontend" -- tendril workload curl -s --fail -w "$curl_fmt" http://api/products/42
try "frontend -> DELETE api/products/42" tendril exec -n shop "$frontend" -- tendril workload curl -s --fail -X DELETE -w "$curl_fmt" http://api/products/42
step "HTTP flows: the api's through the L7 proxy, the db's without any proxy (annotation tendril.io/http-visibility)"
sleep 0.5
tendril hubble observe --server "localhost:$RELAY_PORT" --type l7 --http-path '/products/.*' --last 4
tendril hubble observe --server "localhost:$RELAY_PORT" --type l7 --pod shop/db --last 4

step "tendril connectivity test (offline: the lab's world namespace stands in for the internet)"
tendril connectivity test

step "done: the lab is up"
cat <<EOF
  Hubble Relay:  localhost:$RELAY_PORT      tendril hubble observe --server localhost:$RELAY_PORT -f
  Hubble UI:     http://127.0.0.1:$UI_PORT/  (namespace "shop": the map shows loadgen -> frontend -> api -> db,
                                             and the intruder's dropped edges)
  Status:        tendril status
  Clean up:      tendril lab down
EOF
