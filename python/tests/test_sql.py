"""Near-data SQL from Python: results as pyarrow Tables, through the client's DataFrame API.

Needs pyarrow (skipped loudly without it). The query tests need DuckDB executors on the
storage nodes (registered under /.pond/compute): without them they check that the failure is
a clear ``pond.SqlError``, and say the query itself DID NOT RUN (set POND_REQUIRE_SQL=1 to
fail instead).
"""

import os

import pytest

pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed: SQL tests SKIPPED")
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

import pond  # noqa: E402


def _executors(c):
    return c.exists("/.pond/compute") and len(c.listdir("/.pond/compute")) > 0


@pytest.fixture(scope="module")
def parquet_set(cluster, tmp_path_factory):
    """Three Parquet files in pond under /py/sql; yields (glob, the whole table)."""
    c = pond.connect(cluster)
    c.mkdir("/py/sql")
    d = tmp_path_factory.mktemp("pq")
    parts = []
    for f in range(3):
        n = 1000 + 250 * f
        t = pa.table({
            "k": pa.array([(i * 7 + f) % 5 for i in range(n)], pa.int64()),
            "v": pa.array([float(i % 97) + f for i in range(n)], pa.float64()),
        })
        local = d / f"part-{f}.parquet"
        pq.write_table(t, local, row_group_size=300)
        c.put(local, f"/py/sql/part-{f}.parquet")
        parts.append(t)
    return "/py/sql/*.parquet", pa.concat_tables(parts)


def test_plan_is_built_without_running(cluster, parquet_set):
    glob, _ = parquet_set
    c = pond.connect(cluster)
    df = c.read_parquet(glob).partial_sql("SELECT k, sum(v) AS s FROM {0} GROUP BY k")
    assert "partial_sql" in df.explain() and glob in df.explain()
    with pytest.raises(pond.SqlError, match="read_parquet"):
        pond.DataFrame(c, (("sql", "SELECT 1"),)).to_arrow()


def test_sql_result_is_a_pyarrow_table(cluster, parquet_set):
    glob, whole = parquet_set
    c = pond.connect(cluster)
    stmt = (f"SELECT k, count(*) AS n, sum(v) AS s FROM read_parquet('{glob}') "
            "GROUP BY k ORDER BY k")
    if not _executors(c):
        with pytest.raises(pond.SqlError, match="executor"):
            c.sql(stmt)
        msg = "no DuckDB executors registered in this cluster: SQL query DID NOT RUN"
        if os.environ.get("POND_REQUIRE_SQL") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    t = c.sql(stmt)
    assert isinstance(t, pa.Table)
    want = whole.group_by("k").aggregate([("k", "count"), ("v", "sum")]).sort_by("k")
    assert t.column("k").to_pylist() == want.column("k").to_pylist()
    assert t.column("n").to_pylist() == want.column("k_count").to_pylist()
    for got, exp in zip(t.column("s").to_pylist(), want.column("v_sum").to_pylist()):
        assert abs(got - exp) < 1e-6
    # The lazy DataFrame gives the same rows.
    t2 = (c.read_parquet(glob)
          .partial_sql("SELECT k, count(*) AS n FROM {0} GROUP BY k")
          .sql("SELECT k, sum(n) AS n FROM {0} GROUP BY k ORDER BY k")
          .to_arrow())
    assert t2.column("n").to_pylist() == want.column("k_count").to_pylist()
    assert pc.sum(t2.column("n")).as_py() == whole.num_rows
