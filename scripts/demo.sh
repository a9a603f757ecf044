#!/usr/bin/env bash
# The main job: set up, bring up a 3-host lab (SQLite store), move a game server around all hosts
# while a 200 Hz client plays, print a table. The lab stays up; 'ferry lab down' removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec node bin/ferry.mjs lab demo "$@"
