#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine as root: set up, then pytest.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/setup.sh"
cd "$here"
exec "$here/.venv/bin/python" -m pytest "$@"
