#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine, run as root: Debian packages, the project venv,
# the BPF objects, bpffs, and /usr/local/bin/tendril. Every other script starts by calling this.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

if [ "$(id -u)" -ne 0 ]; then
  echo "tendril setup: must run as root (it installs packages and loads eBPF programs)" >&2
  exit 1
fi

debs=(clang-19 llvm-19 libbpf-dev libbpf1 bpftool iproute2 iperf3 iputils-ping iptables make etcd-server
      python3.11 python3.11-venv python3-venv procps util-linux ca-certificates
      chromium)  # headless browser for tests/test_ui.py (driven by Playwright, no browser download)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "==> installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

venv="$here/.venv"
stamp="$venv/.tendril-installed"
if [ ! -x "$venv/bin/python" ]; then
  echo "==> creating venv $venv"
  /usr/bin/python3.11 -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "==> installing Python packages into the venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -e ".[dev]"
  touch "$stamp"
fi
"$venv/bin/python" scripts/gen_proto.py --quiet  # Hubble gRPC code (skips when up to date)

echo "==> building BPF objects"
make -s -C bpf

mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
ln -sf "$venv/bin/tendril" /usr/local/bin/tendril
