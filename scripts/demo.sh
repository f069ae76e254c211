#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine as root: set up, bring up the lab, deploy the demo app,
# send traffic between pods, and print the flows the datapath saw.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/setup.sh"
cd "$here"
export TENDRIL_LAB=${TENDRIL_LAB:-tendril}

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "tendril lab up"
tendril lab up
step "tendril apply -f examples/demo.yaml"
tendril apply -f examples/demo.yaml
for _ in $(seq 1 50); do
  ready=$(tendril get pods -n demo -o json | python3 -c 'import json,sys; p=json.load(sys.stdin)["items"]; print(sum(i["status"]["phase"]=="Running" for i in p), len(p))')
  [ "${ready% *}" = "${ready#* }" ] && break
  sleep 0.2
done
tendril get pods -n demo -o wide

step "traffic: client -> echo over HTTP (IPv4 and IPv6), UDP and ICMP"
ips=$(tendril get pods -n demo -o json | python3 -c '
import json,sys
for i in json.load(sys.stdin)["items"]:
    if i["metadata"]["labels"].get("app") in ("echo", "udp-echo"):
        print(i["metadata"]["labels"]["app"], *[x["ip"] for x in i["status"]["podIPs"]])')
sleep 1  # let the echo servers bind
while read -r app v4 v6; do
  if [ "$app" = echo ]; then
    tendril exec -n demo client -- tendril workload curl -s -w '%{local_ip}:%{local_port} -> %{remote_ip}:%{remote_port} = %{http_code}\n' "http://$v4:8080/"
    tendril exec -n demo client -- tendril workload curl -s -w '%{local_ip}:%{local_port} -> [%{remote_ip}]:%{remote_port} = %{http_code}\n' "http://[$v6]:8080/"
  else
    tendril exec -n demo client -- python3 -c "
import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
s.sendto(b'hello', ('$v4', 9000)); print('udp echo from $v4:9000:', s.recvfrom(100)[0].decode())"
    tendril exec -n demo client -- ping -c 2 -W 2 "$v4" | tail -n 2
  fi
done <<< "$ips"

step "services and DNS: tendril apply -f examples/service.yaml, then curl http://echo/ from the client"
tendril apply -f examples/service.yaml
tendril get svc -n demo
tendril exec -n demo client -- tendril workload curl -s -w 'echo.demo.svc.cluster.local -> %{remote_ip}:%{remote_port} = %{http_code}\n' http://echo/
tendril service list

step "policy: the intruder pod is not allowed to reach echo (CiliumNetworkPolicy echo-from-client)"
echo_ip=$(awk '$1 == "echo" {print $2; exit}' <<< "$ips")
tendril exec -n demo intruder -- tendril workload curl -s --connect-timeout 1 "http://$echo_ip:8080/" || true
tendril observe -n demo --type drop --last 2
tendril observe -n demo --type policy-verdict --last 4

step "tendril hubble observe --last 30 (flows from the eBPF ring buffer, via the Hubble Observer API)"
sleep 0.3
tendril hubble observe --last 30
step "tendril hubble status"
tendril hubble status
step "tendril endpoint list"
tendril endpoint list
step "tendril policy get"
tendril policy get | tail -n 1
step "tendril bpf metrics list"
tendril bpf metrics list
printf '\nThe lab stays up: try `tendril monitor`, `tendril bpf ct list global`, `tendril exec -n demo client -- ...`.\n'
printf 'Remove it with `tendril lab down`.\n'
