#!/bin/bash
# Runs a command and keeps what it printed in bench/results/NAME.txt, under the same header the
# benchmarks write (bench/transcript.ts): date, machine, QEMU and libvirt versions, the command.
# For runs whose figures the README quotes but that are not benchmarks (the lab demo).
#   bash bench/record.sh lab-demo node bin/ferry.mjs lab demo
set -euo pipefail
name=$1; shift
out="bench/results/$name.txt"
tmp=$(mktemp)
"$@" | tee "$tmp"
{
  echo "# $name.txt"
  echo "date:    $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(awk '/MemTotal/ {printf "%.1f GiB RAM", $2/1048576}' /proc/meminfo), Linux $(uname -r)"
  echo "QEMU:    $(qemu-system-x86_64 --version | head -1 | awk '{print $4}') (TCG)"
  echo "libvirt: $(libvirtd --version 2>/dev/null || echo 'not installed')"
  echo "command: $*"
  echo
  cat "$tmp"
} > "$out"
rm -f "$tmp"
echo "kept in $out"
