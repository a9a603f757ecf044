#!/usr/bin/env bash
# Installs what ferry needs on a Debian 12 machine (as root) and builds the guest image.
# Safe to run again: installed packages are skipped, the guest build is cached.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "==> $*"; }
[ "$(id -u)" = 0 ] || { echo "setup: run as root (it installs Debian packages and creates network namespaces)" >&2; exit 1; }

# qemu-block-extra: QEMU's nfs, iscsi and rbd block drivers (not pulled in without recommends).
# qemu-storage-daemon (replica servers of replicated volumes) comes with qemu-system-x86 (qemu-system-common).
# The storage servers (ganesha, rpcbind, tgt, ceph) run only inside the lab's namespaces: their
# system services are kept from starting (below).
packages=(qemu-system-x86 qemu-block-extra qemu-utils busybox-static cpio gcc libc6-dev iproute2 ca-certificates openssl etcd-server etcd-client
  libnfs-dev nfs-ganesha nfs-ganesha-vfs rpcbind tgt libiscsi-bin ceph-mon ceph-osd ceph-common)
node_ok=0
if command -v node >/dev/null 2>&1 && [ "$(node -p 'process.versions.node.split(".")[0]')" -ge 20 ] && command -v npm >/dev/null 2>&1; then
  node_ok=1
else
  packages+=(nodejs npm)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# The guest build downloads the kernel package with apt-get download: it needs package lists.
if [ ${#missing[@]} -gt 0 ] || ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
  say "apt-get update"
  apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  # No service may start on install (policy-rc.d 101), unless the machine already has a policy of its own.
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && own_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || { [ $own_policy = 1 ] && rm -f /usr/sbin/policy-rc.d; exit 1; }
  [ $own_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
  # With systemd, keep the storage servers' own services off: ferry's lab runs them in its namespaces.
  if [ -d /run/systemd/system ]; then
    systemctl disable --now tgt.service rpcbind.service rpcbind.socket nfs-ganesha.service >/dev/null 2>&1 || true
  fi
fi
if [ $node_ok = 0 ] && [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
  echo "setup: ferry needs Node.js 20 or newer; this machine has $(node --version)" >&2
  exit 1
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi

say "guest image"
bash guest/build.sh

# The nfs storage driver's helper (libnfs): rebuilt when its source changes.
if [ ! tools/out/ferry-nfs -nt tools/ferry-nfs.c ]; then
  say "tools/out/ferry-nfs"
  mkdir -p tools/out
  gcc -O2 -Wall -Wextra -Werror -o tools/out/ferry-nfs tools/ferry-nfs.c -lnfs
fi
