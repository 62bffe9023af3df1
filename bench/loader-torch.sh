#!/usr/bin/env bash
# The loader benchmark's PyTorch rows (issue 6): starts a local cluster (3 meta, 3 storage,
# chains of 3), mounts it through FUSE, runs bench/loader_torch.py, and tears everything down.
#
#   bench/loader-torch.sh [--quick]
#
# Env: POND_BIN (default target/release/pond), PYTHON (a Python with torch and the pond package:
# `python/run-tests.sh` with PYTHON=... and POND_PY_PROFILE=release installs pond into it),
# BENCH_DIR (default a new directory under /tmp). Needs root and /dev/fuse for the FUSE row;
# without them it says so and measures the other rows.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
pond="${POND_BIN:-$repo/target/release/pond}"
py="${PYTHON:-python3}"
dir="${BENCH_DIR:-$(mktemp -d /tmp/pond-loader-torch.XXXXXX)}"
mnt="$dir/mnt"
[[ -x "$pond" ]] || { echo "loader-torch.sh: no pond binary at $pond (cargo build --release --bin pond)" >&2; exit 1; }
"$py" -c "import torch, pond" || { echo "loader-torch.sh: $py lacks torch or pond" >&2; exit 1; }

cleanup() {
    "$pond" unmount "$mnt" >/dev/null 2>&1 || fusermount3 -u "$mnt" >/dev/null 2>&1 || true
    "$pond" down --dir "$dir" >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT
"$pond" up --detach --dir "$dir" --meta 3 --storage 3 --replicas 3 >/dev/null
echo "loader-torch.sh: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), torch $("$py" -c 'import torch; print(torch.__version__)')"
mount_arg=()
if [[ $EUID -eq 0 && -c /dev/fuse ]]; then
    mkdir -p "$mnt"
    "$pond" mount --cluster "$dir/cluster.toml" --detach "$mnt" >/dev/null
    mount_arg=(--mount "$mnt")
else
    echo "loader-torch.sh: NOTE: not root or no /dev/fuse: the DataLoader-over-FUSE row is NOT measured" >&2
fi
"$py" "$here/loader_torch.py" "$dir/cluster.toml" "${mount_arg[@]}" "$@"
echo "loader-torch.sh: load average at end $(cut -d' ' -f1-3 /proc/loadavg)"
