"""A real local pond cluster for the Python tests, started with the `pond` binary.

POND_BIN names the binary (default: target/debug/pond of this repository).
"""

import os
import pathlib
import subprocess
import tempfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def pond_bin():
    return os.environ.get("POND_BIN", str(REPO / "target" / "debug" / "pond"))


@pytest.fixture(scope="session")
def cluster():
    """Yields the cluster file path of a 1-meta, 3-storage cluster (chains of 3)."""
    binary = pond_bin()
    if not os.access(binary, os.X_OK):
        pytest.fail(f"pond binary not found at {binary}: build it or set POND_BIN")
    d = tempfile.mkdtemp(prefix="pond-py-")
    subprocess.run(
        [binary, "up", "--detach", "--timeout-secs", "120", "--dir", d, "--meta", "1",
         "--storage", "3", "--targets-per-node", "2", "--replicas", "3"],
        check=True, stdin=subprocess.DEVNULL,
    )
    try:
        yield os.path.join(d, "cluster.toml")
    finally:
        subprocess.run([binary, "down", "--dir", d], check=False)


def sample_bytes(i):
    """Sample i of the test datasets: a varying length and a pattern naming i."""
    n = (i * 7919) % 3000
    return bytes(((i * 31 + k * 7) & 0xFF) for k in range(n))


@pytest.fixture(scope="session")
def packed(cluster, tmp_path_factory):
    """A dataset of 500 samples packed from a local directory; yields its pond path."""
    import pond

    src = tmp_path_factory.mktemp("src")
    for i in range(500):
        (src / f"{i:05}.bin").write_bytes(sample_bytes(i))
    c = pond.connect(cluster)
    rep = c.pack(str(src), "/py/ds", shard_bytes=200_000)
    assert rep["samples"] == 500 and rep["shards"] > 1, rep
    return "/py/ds"
