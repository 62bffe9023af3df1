#!/usr/bin/env bash
# Builds and installs the `pond` Python package, then runs its pytest suite against a local
# cluster started with the `pond` binary. Exit status: pytest's (0 = passed), except that
# "no tests collected" (pytest's 5) counts as a failure, as does any build or install error.
#
# Env: POND_BIN (default <repo>/target/debug/pond; built with `cargo build --bin pond` if
# missing), PYTHON (default python3), POND_PY_PROFILE (cargo profile of the extension,
# default dev: shares the workspace's debug build; use release for benchmarks).
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
"$py" -m pip install --quiet --disable-pip-version-check "maturin>=1.5,<2" pytest
echo "run-tests.sh: installing ./python (cargo profile $profile)"
MATURIN_PEP517_ARGS="--profile $profile" \
    "$py" -m pip install --quiet --disable-pip-version-check --no-build-isolation "$here"
if ! "$py" -c "import torch" 2>/dev/null; then
    echo "run-tests.sh: NOTE: torch is not installed; the PyTorch tests will be SKIPPED" \
        "(install a CPU wheel from PyPI to run them: $py -m pip install torch)"
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
