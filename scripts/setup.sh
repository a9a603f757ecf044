#!/usr/bin/env bash
# Installs what ferry needs on a Debian 12 or 13 machine (as root) and builds the guest image.
# Safe to run again: installed packages are skipped, the guest build is cached.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "==> $*"; }
[ "$(id -u)" = 0 ] || { echo "setup: run as root (it installs Debian packages and creates network namespaces)" >&2; exit 1; }

# qemu-block-extra: QEMU's nfs, iscsi and rbd block drivers (not pulled in without recommends).
# qemu-storage-daemon (replica servers of replicated volumes) comes with qemu-system-x86 (qemu-system-common).
# The storage servers (ganesha, rpcbind, tgt, ceph) run only inside the lab's namespaces: their
# system services are kept from starting (below).
# ovmf: UEFI firmware; dosfstools + mtools: cloud-init seeds; grub-*, xorriso: the guest as a bootable image;
# debootstrap + fdisk: the Debian guest image (guest/debian/build.sh); openssh-client: the test logs into it.
# chromium: the web UI's browser tests (driven by playwright-core; no browser is downloaded).
packages=(qemu-system-x86 qemu-block-extra qemu-utils busybox-static cpio gcc libc6-dev iproute2 ca-certificates openssl etcd-server etcd-client
  libnfs-dev nfs-ganesha nfs-ganesha-vfs rpcbind tgt libiscsi-bin ceph-mon ceph-osd ceph-common
  ovmf mtools dosfstools xorriso grub-common grub-pc-bin grub-efi-amd64-bin debootstrap fdisk openssh-client chromium)
node_ok=0
if command -v node >/dev/null 2>&1 && [ "$(node -p 'process.versions.node.split(".")[0]')" -ge 20 ] && command -v npm >/dev/null 2>&1; then
  node_ok=1
else
  packages+=(nodejs npm)
fi

# QEMU >= 9.0: older releases lose dirty pages under TCG during migration (fixed upstream by commit
# 03bfc2188f06, "physmem: Fix migration dirty bitmap coherency with TCG memory access"). Debian 13
# ships QEMU 10; on Debian 12 it comes from bookworm-backports, pinned so that only QEMU's packages
# and seabios come from there and everything else stays Debian 12's.
codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
sources_changed=0
case "$codename" in
  bookworm)
    uri=$(awk '/^URIs:/ && /debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$uri" ] || uri=http://deb.debian.org/debian
    backports=$(printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri")
    pin=$(printf '# ferry: QEMU >= 9.0 (TCG dirty tracking fix) from bookworm-backports; nothing else.\nPackage: qemu-* seabios\nPin: release n=bookworm-backports\nPin-Priority: 990\n')
    if [ "$(cat /etc/apt/sources.list.d/ferry-backports.sources 2>/dev/null)" != "$backports" ]; then
      say "apt source bookworm-backports (QEMU >= 9.0 only, pinned in /etc/apt/preferences.d/ferry-qemu)"
      echo "$backports" > /etc/apt/sources.list.d/ferry-backports.sources
      sources_changed=1
    fi
    if [ "$(cat /etc/apt/preferences.d/ferry-qemu 2>/dev/null)" != "$pin" ]; then
      echo "$pin" > /etc/apt/preferences.d/ferry-qemu
      sources_changed=1
    fi
    ;;
  trixie|forky|sid) ;;
  *) echo "setup: this is '${codename:-an unknown release}'; ferry is set up on Debian 12 (bookworm) and 13 (trixie); trying anyway" >&2 ;;
esac

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
qemu_version() { dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null | sed -E 's/^[0-9]+://; s/[^0-9.].*//'; }
qemu_too_old() { local v; v=$(qemu_version); [ -n "$v" ] && [ "${v%%.*}" -lt 9 ]; }
if qemu_too_old; then
  say "QEMU $(qemu_version) is installed; upgrading to >= 9.0 (its TCG dirty tracking loses pages in migration)"
  missing+=(qemu-system-x86 qemu-system-common qemu-system-data qemu-block-extra qemu-utils)
fi
# The guest build downloads the kernel package with apt-get download: it needs package lists.
if [ ${#missing[@]} -gt 0 ] || [ $sources_changed = 1 ] || ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
  say "apt-get update"
  apt-get update -qq
fi
# A storage server or etcd that this release does not package leaves its lab storage (and its tests)
# unavailable, not the rest of ferry.
optional=" etcd-server etcd-client nfs-ganesha nfs-ganesha-vfs rpcbind tgt libiscsi-bin ceph-mon ceph-osd ceph-common "
available=()
for p in "${missing[@]}"; do
  if [[ "$optional" == *" $p "* ]] && ! apt-cache show "$p" >/dev/null 2>&1; then
    echo "setup: the Debian package '$p' does not exist on this release; skipping it (the lab storage that needs it will not start)" >&2
  else
    available+=("$p")
  fi
done
missing=("${available[@]}")
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
if qemu_too_old; then
  echo "setup: QEMU $(qemu_version) is still installed; ferry needs QEMU >= 9.0 (apt-cache policy qemu-system-x86 shows where it could come from)" >&2
  exit 1
fi
if [ $node_ok = 0 ] && [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
  echo "setup: ferry needs Node.js 20 or newer; this machine has $(node --version)" >&2
  exit 1
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi

# The compiled CLI and agent (dist/): nothing is transpiled when ferry runs. `ferry` on the PATH.
say "build (esbuild -> dist/)"
node scripts/build.mjs
ln -sf "$PWD/bin/ferry.mjs" /usr/local/bin/ferry || echo "setup: could not link /usr/local/bin/ferry (not root?); run bin/ferry.mjs" >&2
{ mkdir -p /etc/bash_completion.d && node bin/ferry.mjs completion bash > /etc/bash_completion.d/ferry; } 2>/dev/null || echo "setup: could not install the bash completion (not root?)" >&2

say "guest image"
bash guest/build.sh

# The nfs storage driver's helper (libnfs): rebuilt when its source changes.
if [ ! tools/out/ferry-nfs -nt tools/ferry-nfs.c ]; then
  say "tools/out/ferry-nfs"
  mkdir -p tools/out
  gcc -O2 -Wall -Wextra -Werror -o tools/out/ferry-nfs tools/ferry-nfs.c -lnfs
fi

# A real Debian 12 guest (systemd, cloud-init, qemu-guest-agent, sshd, the OpenArena server) for
# the tests and demo of VMs made from images: built once from the mirror, cached by its inputs.
say "Debian guest image"
bash guest/debian/build.sh

# The Debian installer as an ISO (its own kernel and initrd, from debian-installer-12-netboot-amd64):
# the tests boot it from a VM's CD-ROM to its first screen.
say "installer ISO"
bash guest/installer/build.sh
