#!/usr/bin/env bash
# The test command of the README: every Rust test (unit + integration with real `pond`
# processes, FUSE included: run as root with /dev/fuse), with the DuckDB executor linked
# against the prebuilt libduckdb (compute/fetch-duckdb.sh), then the Python package's tests.
# Extra arguments go to `cargo nextest run` (e.g. `./test.sh --test fuse`).
set -euo pipefail
cd "$(dirname "$0")"
target="${CARGO_TARGET_DIR:-$PWD/target}"

bash compute/fetch-duckdb.sh "$target/duckdb"
export DUCKDB_LIB_DIR="$target/duckdb" DUCKDB_INCLUDE_DIR="$target/duckdb"
export LD_LIBRARY_PATH="$target/duckdb${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The compute tests fail (rather than skip) if DuckDB is somehow not linked.
export POND_REQUIRE_DUCKDB=1

if [ ! -e /dev/fuse ]; then
    echo "test.sh: WARNING: /dev/fuse is missing: the FUSE tests will FAIL, not skip." >&2
fi

# pjdfstest (crates.io's Rust rewrite of the POSIX suite) for the FUSE conformance test in
# tests/it/fuse.rs: built once into the target directory.
if [ -z "${POND_PJDFSTEST:-}" ]; then
    POND_PJDFSTEST="$target/pjdfstest/bin/pjdfstest"
    if [ ! -x "$POND_PJDFSTEST" ]; then
        cargo install pjdfstest --version 0.2.2 --locked --root "$target/pjdfstest"
    fi
    export POND_PJDFSTEST
fi
# fsx (crates.io's Rust rewrite of the File System eXerciser) for the random-I/O data check in
# tests/it/fuse.rs: built once into the target directory.
if [ -z "${POND_FSX:-}" ]; then
    POND_FSX="$target/fsx/bin/fsx"
    if [ ! -x "$POND_FSX" ]; then
        cargo install fsx --version 0.2.0 --locked --root "$target/fsx"
    fi
    export POND_FSX
fi

cargo nextest run --workspace --features pond-compute/duckdb "$@"

if [ "$#" -eq 0 ]; then
    POND_BIN="$target/debug/pond" bash python/run-tests.sh
fi
