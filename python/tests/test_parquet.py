"""Parquet row datasets from Python: rows of Parquet files in pond as pyarrow RecordBatches,
in the sampler's order, through the batch reader and a PyTorch DataLoader."""

import pickle

import pytest

pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed: Parquet tests SKIPPED")
import pyarrow.parquet as pq  # noqa: E402

import pond  # noqa: E402

N_FILES, ROWS = 3, 400


@pytest.fixture(scope="module")
def rows_glob(cluster, tmp_path_factory):
    """3 Parquet files of 400 rows each (row groups of 64), ids 0..1199 in file order."""
    c = pond.connect(cluster)
    c.mkdir("/py/rows")
    d = tmp_path_factory.mktemp("rows")
    for f in range(N_FILES):
        ids = list(range(f * ROWS, (f + 1) * ROWS))
        t = pa.table({
            "id": pa.array(ids, pa.int64()),
            "text": pa.array([f"sample {i} " * (i % 7 + 1) for i in ids]),
            "label": pa.array([i % 10 for i in ids], pa.int32()),
        })
        local = d / f"part-{f}.parquet"
        pq.write_table(t, local, row_group_size=64, compression="snappy")
        c.put(local, f"/py/rows/part-{f}.parquet")
    return "/py/rows/part-*.parquet"


def test_rows_in_the_order_asked(cluster, rows_glob):
    ds = pond.connect(cluster).parquet_dataset(rows_glob)
    assert len(ds) == N_FILES * ROWS
    assert ds.row_groups == N_FILES * 7
    ask = [1199, 0, 401, 63, 64, 401]
    b = ds.get_many(ask)
    assert isinstance(b, pa.RecordBatch)
    assert b.column("id").to_pylist() == ask
    assert b.column("text").to_pylist()[0] == "sample 1199 " * (1199 % 7 + 1)
    assert ds[-1].column("id").to_pylist() == [1199]
    with pytest.raises(IndexError):
        ds.get_many([N_FILES * ROWS])
    # Projection: fewer columns, fewer bytes.
    proj = pond.ParquetDataset(cluster, rows_glob, columns=["label"])
    before = proj.bytes_requested
    pb = proj.get_many(ask)
    assert pb.schema.names == ["label"]
    assert pb.column("label").to_pylist() == [i % 10 for i in ask]
    full_before = ds.bytes_requested
    ds.get_many(ask)
    assert proj.bytes_requested - before < ds.bytes_requested - full_before
    # Picklable without its native handle.
    assert pickle.loads(pickle.dumps(proj)).get_many([5]).column("label").to_pylist() == [5]


def test_epoch_over_ranks_and_resume(cluster, rows_glob):
    ds = pond.connect(cluster).parquet_dataset(rows_glob)
    seen = []
    for rank in range(2):
        for indices, batch in ds.reader(50, seed=3, epoch=1, rank=rank, world_size=2):
            assert batch.column("id").to_pylist() == indices
            seen.extend(indices)
    assert sorted(seen) == list(range(N_FILES * ROWS))
    full = [i for ix, _ in ds.reader(32, seed=4) for i in ix]
    rest = [i for ix, _ in ds.reader(32, seed=4, position=96) for i in ix]
    assert full[96:] == rest


def test_unsupported_or_broken_files_are_clear_errors(cluster, tmp_path):
    c = pond.connect(cluster)
    t = pa.table({"id": pa.array(range(100), pa.int64())})
    pq.write_table(t, tmp_path / "z.parquet", compression="zstd")
    c.put(tmp_path / "z.parquet", "/py/rows-zstd.parquet")
    zs = c.parquet_dataset(["/py/rows-zstd.parquet"])
    assert len(zs) == 100  # the footer is plain
    with pytest.raises(pond.CorruptIndexError, match="rows-zstd.parquet"):
        zs.get_many([3])
    c.write_file("/py/rows-junk.parquet", b"not parquet" * 10)
    with pytest.raises(pond.CorruptIndexError, match="rows-junk.parquet"):
        len(c.parquet_dataset("/py/rows-junk.parquet"))


def test_torch_iterable_over_parquet_rows_with_workers(cluster, rows_glob):
    torch = pytest.importorskip("torch", reason="torch is not installed: SKIPPED")
    import pond.torch as pt

    src = pond.ParquetDataset(cluster, rows_glob, columns=["id", "label"])
    it = pt.IterableDataset(src, batch_size=40, seed=8, rank=0, world_size=1,
                            transform=_label_tensor, with_indices=True)
    dl = pt.DataLoader(it, num_workers=2, multiprocessing_context="fork")
    got = []
    for ix, labels in dl:
        assert isinstance(labels, torch.Tensor)
        assert labels.tolist() == [i % 10 for i in ix]
        got.extend(ix)
    assert got == pond.Sampler(N_FILES * ROWS, seed=8).take_all()


def _label_tensor(batch):
    import torch
    return torch.tensor(batch.column("label").to_pylist())
