#!/usr/bin/env bash
# The main job on a fresh machine: installs what it needs, then runs the end-to-end demo.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/appliance demo "$@"
