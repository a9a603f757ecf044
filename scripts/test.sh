#!/usr/bin/env bash
# Set up, type-check, and run all tests (unit and real-QEMU integration) with node:test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "==> tsc --noEmit"
npx --no-install tsc --noEmit
npx --no-install tsc --noEmit -p ui
echo "==> tests"
exec npm test --silent
