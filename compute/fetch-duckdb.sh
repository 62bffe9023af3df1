#!/usr/bin/env bash
# Fetches the prebuilt DuckDB shared library (v1.5.6, Parquet built in) from the npm registry
# package @duckdb/node-bindings-linux-x64 and unpacks it into DIR (default: target/duckdb).
# Idempotent: does nothing when DIR already holds the expected library.
#
#   bash compute/fetch-duckdb.sh [DIR]
#   export DUCKDB_LIB_DIR=DIR DUCKDB_INCLUDE_DIR=DIR LD_LIBRARY_PATH=DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
#
# See docs/compute.md for why the prebuilt library (no 20+ minute C++ build).
set -euo pipefail

PKG="@duckdb/node-bindings-linux-x64"
VERSION="1.5.6-r.1"
DIR="${1:-target/duckdb}"
STAMP="$DIR/.pond-duckdb-$VERSION"

if [[ -f "$STAMP" && -f "$DIR/libduckdb.so" ]]; then
    echo "fetch-duckdb: $DIR already holds libduckdb.so ($PKG@$VERSION)"
    exit 0
fi
if [[ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]]; then
    echo "fetch-duckdb: only linux x86_64 is packaged here (got $(uname -s)-$(uname -m))" >&2
    exit 1
fi
command -v npm >/dev/null || { echo "fetch-duckdb: npm is required (apt-get install npm)" >&2; exit 1; }

mkdir -p "$DIR"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && npm pack --silent "$PKG@$VERSION" >/dev/null)
tar -xzf "$WORK"/*.tgz -C "$WORK"
[[ -f "$WORK/package/libduckdb.so" ]] || { echo "fetch-duckdb: $PKG@$VERSION has no libduckdb.so" >&2; exit 1; }
# Atomic enough for concurrent callers: copy under a temporary name, then rename.
cp "$WORK/package/libduckdb.so" "$DIR/.libduckdb.so.tmp.$$"
mv -f "$DIR/.libduckdb.so.tmp.$$" "$DIR/libduckdb.so"
cp "$WORK/package/LICENSE" "$DIR/LICENSE.duckdb"
touch "$STAMP"
echo "fetch-duckdb: unpacked libduckdb.so ($PKG@$VERSION) into $DIR"
