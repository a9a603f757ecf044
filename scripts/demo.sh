#!/usr/bin/env bash
# The main job: set up, then live-migrate a game server back and forth and print what a player noticed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec npx --no-install ferry demo "$@"
