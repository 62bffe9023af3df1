#!/usr/bin/env bash
# Builds and installs the `pond` Python package, then runs its pytest suite against a local
# cluster started with the `pond` binary. Exit status: pytest's (0 = passed), except that
# "no tests collected" (pytest's 5) counts as a failure, as does any build or install error.
#
# Env: POND_BIN (default <repo>/target/debug/pond; built with `cargo build --bin pond` if
# missing), PYTHON (default python3), POND_PY_PROFILE (cargo profile of the extension,
# default dev: shares the workspace's debug build; use release for benchmarks),
# POND_REQUIRE_TORCH=1 (fail instead of skipping the PyTorch tests when torch is missing;
# a CPU-only box gets torch with `pip install torch`, ~3 GB download, see docs/loader.md),
# POND_REQUIRE_SQL=1 (fail instead of skipping the SQL query when no executor runs).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
py="${PYTHON:-python3}"
profile="${POND_PY_PROFILE:-dev}"
export POND_BIN="${POND_BIN:-$repo/target/debug/pond}"
if [[ ! -x "$POND_BIN" ]]; then
    echo "run-tests.sh: building the pond binary ($POND_BIN)"
    (cd "$repo" && cargo build --bin pond)
fi
"$py" -m pip install --quiet --disable-pip-version-check "maturin>=1.5,<2" pytest pyarrow
# Without build isolation the maturin build backend runs the `maturin` executable from PATH:
# put this interpreter's scripts directory (a venv's bin/) first.
PATH="$("$py" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
export PATH
echo "run-tests.sh: installing ./python (cargo profile $profile)"
MATURIN_PEP517_ARGS="--profile $profile" \
    "$py" -m pip install --quiet --disable-pip-version-check --no-build-isolation "$here"
if "$py" -c "import torch" 2>/dev/null; then
    echo "run-tests.sh: torch $("$py" -c 'import torch; print(torch.__version__)') found:" \
        "the PyTorch tests RUN"
elif [[ "${POND_REQUIRE_TORCH:-0}" == 1 ]]; then
    echo "run-tests.sh: POND_REQUIRE_TORCH=1 but torch is not importable by $py" >&2
    exit 1
else
    echo "run-tests.sh: NOTE: torch is not installed; the PyTorch tests will be SKIPPED" \
        "(install it to run them: $py -m pip install torch)"
fi
cd "$here"
set +e
"$py" -m pytest -v -rs tests "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
    echo "run-tests.sh: pytest collected no tests: failing" >&2
    exit 1
fi
exit $rc
