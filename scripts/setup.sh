#!/usr/bin/env bash
# Idempotent machine set-up for Lumen: Debian packages, the kernel-header links bcc
# needs, and a venv that can import Debian's bcc. Safe to run again; says what it changes.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3-venv python3-pip iputils-ping python3-bpfcc bpfcc-tools libbpf1 linux-headers-amd64 iproute2 iperf3
  containerd podman containernetworking-plugins busybox-static prometheus sockperf systemd
  chromium chromium-driver nftables clickhouse-server
)

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: must run as root (installs packages, links kernel headers)" >&2
  exit 1
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "setup: Debian packages already installed"
fi

# bcc compiles against /lib/modules/$(uname -r)/{build,source}; this kernel ships none,
# so point them at Debian's generic headers (BCC_KERNEL_SOURCE alone does not work in bcc 0.26).
kdir="/lib/modules/$(uname -r)"
if [ ! -e "$kdir/build/include" ]; then
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
  common=${hdr%-amd64}-common
  if [ -z "$hdr" ] || [ ! -d "$common" ]; then
    echo "setup: no linux-headers-*-amd64 under /usr/src; cannot link kernel headers for bcc" >&2
    exit 1
  fi
  mkdir -p "$kdir"
  ln -sfn "$hdr" "$kdir/build"
  ln -sfn "$common" "$kdir/source"
  echo "setup: running kernel $(uname -r) has no headers; linked $kdir/build -> $hdr and $kdir/source -> $common"
else
  echo "setup: kernel headers for bcc present at $kdir/build"
fi

mountpoint -q /sys/fs/bpf || { mount -t bpf bpf /sys/fs/bpf && echo "setup: mounted bpffs at /sys/fs/bpf"; }

# The venv must be Debian's python with system site-packages: bcc is only importable there.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import bcc' 2>/dev/null; then
  rm -rf .venv
  /usr/bin/python3 -m venv --system-site-packages .venv
  echo "setup: created .venv (Debian python3 with system site-packages, so bcc imports)"
fi
stamp=.venv/.setup-stamp
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
  touch "$stamp"
  echo "setup: installed Python dependencies into .venv"
fi

if [ -f web/package.json ]; then
  if [ ! -d web/node_modules ] || [ web/package.json -nt web/node_modules ]; then
    (cd web && npm install --no-audit --no-fund --silent) && touch web/node_modules
    echo "setup: installed web front-end packages from npm"
  fi
fi
echo "setup: done"
