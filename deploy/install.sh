#!/usr/bin/env bash
# Install Lumen on a bare node (no Kubernetes): the CNI plugin, a conflist and a systemd unit for the agent.
#
#   deploy/install.sh --pod-cidr 10.244.0.0/24 [--pod-cidr fd00:244::/64] [--root /] [--lumen-bin PATH]
#                     [--bridge lumen0] [--mtu N] [--no-portmap] [--no-start] [--routing-mode direct|vxlan]
#
# --routing-mode is how this node's pods reach other nodes' pods (docs/scale-out.md): the agent's unit
# gets it, and in vxlan mode the conflist's MTU is 50 below the default route device's. The other nodes
# come from `Node` manifests in /etc/lumen/policies.
# --root installs into another root (an image being built, or a test's temp dir); the paths written into
# the conflist and the unit are the node's own (/run/lumen, /sys/fs/bpf/lumen, ...), not prefixed.
# --lumen-bin uses an existing `lumen` executable for the agent; without it a venv is made under
# <root>/opt/lumen/venv (with the system site-packages, where Debian's python3-bpfcc lives) and this
# checkout is pip-installed into it, editable (the agent runs from the checkout; a venv is only valid at
# the path it was made at, so this mode needs --root /). The unit is enabled and started only when --root is / and systemd runs.
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
root=/
lumen_bin=""
start=1
mode=direct
conf_args=()
cidrs=0

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root=${2:?--root needs a directory}; shift 2 ;;
    --pod-cidr) conf_args+=(--pod-cidr "${2:?--pod-cidr needs a CIDR}"); cidrs=$((cidrs + 1)); shift 2 ;;
    --bridge|--mtu) conf_args+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
    --no-portmap) conf_args+=(--no-portmap); shift ;;
    --routing-mode)
      mode=${2:?--routing-mode needs direct or vxlan}
      case "$mode" in direct|vxlan) ;; *) echo "install: --routing-mode is direct or vxlan" >&2; exit 2 ;; esac
      conf_args+=(--routing-mode "$mode"); shift 2 ;;
    --lumen-bin) lumen_bin=${2:?--lumen-bin needs a path}; shift 2 ;;
    --no-start) start=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
[ "$cidrs" -gt 0 ] || { echo "install: at least one --pod-cidr is required" >&2; exit 2; }
root=$(cd "$root" && pwd)
r=${root%/}  # "" for /, so "$r/etc" is /etc

# 1. The plugin executable and its support files (the runtime execs <cni bin dir>/lumen).
bash "$src/scripts/install-cni.sh" "$r/opt/cni/bin"

# 2. The conflist; first in lexical order so the runtime picks it over leftovers of another CNI.
/usr/bin/python3 "$src/deploy/cniconf.py" "${conf_args[@]}" --output "$r/etc/cni/net.d/10-lumen.conflist"

# 3. The agent: a venv unless an executable is given.
if [ -z "$lumen_bin" ]; then
  [ "$root" = / ] || { echo "install: --root other than / needs --lumen-bin" >&2; exit 2; }
  venv=/opt/lumen/venv
  /usr/bin/python3 -m venv --system-site-packages "$venv"
  "$venv/bin/pip" install --quiet -e "$src"
  lumen_bin=/opt/lumen/venv/bin/lumen  # the path as the node will see it
fi

install -d -m 0755 "$r/etc/systemd/system" "$r/var/lib/cni/lumen" "$r/var/log/lumen"
unit="$r/etc/systemd/system/lumen-agent.service"
cat > "$unit.tmp" <<UNIT
# Installed by Lumen's deploy/install.sh.
[Unit]
Description=Lumen node agent (eBPF datapath, flows, metrics)
Documentation=file://$src/docs/install.md
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=$lumen_bin agent --state-dir /run/lumen --pin-dir /sys/fs/bpf/lumen --host 127.0.0.1 --port 9465 --routing-mode $mode
Environment=NODE_NAME=%H
Restart=on-failure
RestartSec=2
# Only what loading and attaching TC programs needs (see docs/install.md for each one).
CapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_NET_ADMIN CAP_SYS_RESOURCE
# Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
LimitMEMLOCK=infinity
NoNewPrivileges=yes
PrivateTmp=yes
ProtectHome=yes
ProtectSystem=full
KillSignal=SIGTERM
TimeoutStopSec=20

[Install]
WantedBy=multi-user.target
UNIT
chmod 0644 "$unit.tmp"
mv "$unit.tmp" "$unit"
echo "install: wrote $unit"

if [ "$root" = / ] && [ "$start" = 1 ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable --now lumen-agent.service
  echo "install: lumen-agent started; metrics on http://127.0.0.1:9465/metrics"
fi
