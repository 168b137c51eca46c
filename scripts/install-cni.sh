#!/usr/bin/env bash
# Install the CNI plugin executable `lumen` into a runtime's CNI bin dir.
# Installs plugin/ (stdlib only, precompiled) under <dest>/lumen.d and a launcher that runs it with the
# system python3 in isolated mode (-I: no user site or env vars; -S: no site import, faster start).
set -euo pipefail
dest=${1:?usage: install-cni.sh <dest dir>}
src=$(cd "$(dirname "$0")/.." && pwd)
py=/usr/bin/python3
[ -x "$py" ] || { echo "install-cni: $py not found (the plugin runs on the system python3)" >&2; exit 1; }
mkdir -p "$dest"
stage=$(mktemp -d "$dest/.lumen.d.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/plugin"
(cd "$src" && find plugin -name '*.py' -print0 | xargs -0 -I{} install -D -m 0644 {} "$stage/{}")
"$py" -m compileall -q -j 0 "$stage/plugin" >/dev/null
chmod 0755 "$stage"
rm -rf "$dest/lumen.d.old"
[ -d "$dest/lumen.d" ] && mv "$dest/lumen.d" "$dest/lumen.d.old"
mv "$stage" "$dest/lumen.d"
rm -rf "$dest/lumen.d.old"
trap - EXIT
cat > "$dest/.lumen.tmp" <<'PY'
#!/usr/bin/python3 -IS
# Lumen CNI plugin launcher (installed by `make cni-bin`).
import gc, os, sys
gc.disable()  # a process that lives for one call: cyclic collections during imports are wasted work
sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), "lumen.d"))
from plugin.launcher import run_and_exit
run_and_exit()
PY
chmod 0755 "$dest/.lumen.tmp"
mv "$dest/.lumen.tmp" "$dest/lumen"
echo "install-cni: installed $dest/lumen (support files in $dest/lumen.d)"
