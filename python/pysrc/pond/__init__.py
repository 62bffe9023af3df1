"""pond: Python client of the pond distributed filesystem.

    import pond
    c = pond.connect("/tmp/c/cluster.toml")
    c.write_file("/x", b"hello")
    ds = c.dataset("/datasets/train")          # packed with `pond dataset pack`
    for indices, samples in ds.reader(batch_size=64, seed=1, epoch=0):
        ...
    t = c.sql("SELECT k, count(*) FROM read_parquet('/t/*.parquet') GROUP BY k")  # pyarrow.Table

Every object here is safe to carry across ``fork`` and to pickle (for ``spawn``): the native
connection is made lazily, once per process, the first time it is needed. Native objects from
``pond._pond`` themselves refuse to work in a forked child (a tokio runtime's threads do not
survive fork); these wrappers never hand one across.

PyTorch datasets live in :mod:`pond.torch` (imported only when used).
"""

import os

from ._pond import BatchReader, CorruptIndexError, Sampler, SqlError
from ._pond import Client as _NativeClient

__all__ = [
    "connect",
    "Client",
    "Dataset",
    "Sampler",
    "BatchReader",
    "CorruptIndexError",
    "DataFrame",
    "ParquetDataset",
    "SqlError",
]


def _arrow_table(ipc):
    """An Arrow IPC stream (bytes) as a ``pyarrow.Table``."""
    try:
        import pyarrow.ipc
    except ImportError as e:
        raise ImportError(
            "SQL results are pyarrow Tables: install pyarrow (pip install pyarrow)"
        ) from e
    return pyarrow.ipc.open_stream(pyarrow.py_buffer(ipc)).read_all()


def _record_batch(ipc):
    """An Arrow IPC stream of one record batch as a ``pyarrow.RecordBatch``."""
    try:
        import pyarrow.ipc
    except ImportError as e:
        raise ImportError(
            "Parquet rows come as pyarrow RecordBatches: install pyarrow (pip install pyarrow)"
        ) from e
    return pyarrow.ipc.open_stream(pyarrow.py_buffer(ipc)).read_next_batch()


class Client:
    """A connection to one cluster, made lazily in each process that uses it."""

    def __init__(self, cluster_file):
        self.cluster_file = os.fspath(cluster_file)
        self._native = None
        self._pid = None

    def native(self):
        """The process-local native client (connects on first use in each process)."""
        pid = os.getpid()
        if self._native is None or self._pid != pid:
            # After a fork the inherited native client is dropped here; its Rust side
            # leaks rather than joining threads the child does not have.
            self._native = _NativeClient(self.cluster_file)
            self._pid = pid
        return self._native

    def __getstate__(self):
        return {"cluster_file": self.cluster_file}

    def __setstate__(self, state):
        self.__init__(state["cluster_file"])

    def __repr__(self):
        return f"pond.Client({self.cluster_file!r})"

    # Files.
    def read_file(self, path):
        return self.native().read_file(path)

    def write_file(self, path, data):
        self.native().write_file(path, bytes(data))

    def pread(self, path, offset, length):
        return self.native().pread(path, offset, length)

    def stat(self, path):
        return self.native().stat(path)

    def exists(self, path):
        return self.native().exists(path)

    def listdir(self, path):
        return self.native().listdir(path)

    def mkdir(self, path, parents=True):
        self.native().mkdir(path, parents)

    def remove(self, path):
        self.native().remove(path)

    def put(self, local, remote):
        return self.native().put(os.fspath(local), remote)

    def get(self, remote, local):
        return self.native().get(remote, os.fspath(local))

    # Datasets.
    def pack(self, src, dst, shard_bytes=None, replace=False):
        """Packs a local directory (a sample per file) or JSONL file (a sample per line).

        Atomic: ``dst`` appears complete or not at all. An existing ``dst`` raises
        ``FileExistsError`` unless ``replace`` (then it is swapped in one rename).
        """
        return self.native().pack(os.fspath(src), dst, shard_bytes, replace)

    def dataset(self, path):
        """A packed dataset: its pond directory or index file."""
        return Dataset(self, path=path)

    def fixed_dataset(self, paths, record_bytes):
        """Fixed-size records spread over ``paths`` in order."""
        return Dataset(self, paths=list(paths), record_bytes=record_bytes)

    def parquet_dataset(self, paths, columns=None):
        """The rows of Parquet files as a dataset: a list of pond paths, or one glob."""
        return ParquetDataset(self, paths, columns)

    # Near-data SQL (runs on the storage nodes' DuckDB executors).
    def sql(self, statement, deadline_ms=None):
        """Runs one ``SELECT ... FROM read_parquet('/pond/glob') ...`` statement near the
        data (split into per-file partial and final aggregation when it can be) and returns
        the result as a ``pyarrow.Table``. Raises :class:`SqlError` when it fails."""
        return DataFrame(self, (("sql_statement", statement),)).to_arrow(deadline_ms)

    def read_parquet(self, glob):
        """A lazy :class:`DataFrame` over the Parquet files matching ``glob`` (one partition
        per file)."""
        return DataFrame(self, (("read_parquet", glob),))


class DataFrame:
    """A lazy near-data plan: ``read_parquet(glob)``, then ``partial_sql(sql)`` (per
    partition, ``{0}`` names it) and ``sql(sql)`` (once over all partitions). Nothing runs
    until :meth:`to_arrow`. Plain data: safe to pickle and to carry across fork."""

    def __init__(self, client, ops):
        self.client = client
        self.ops = tuple(ops)

    def partial_sql(self, sql):
        return DataFrame(self.client, self.ops + (("partial_sql", sql),))

    def sql(self, sql):
        return DataFrame(self.client, self.ops + (("sql", sql),))

    def explain(self):
        return self.client.native().sql_explain(list(self.ops))

    def to_arrow(self, deadline_ms=None):
        """Runs the plan; the result as a ``pyarrow.Table``."""
        return _arrow_table(self.client.native().sql_arrow(list(self.ops), deadline_ms))

    def __repr__(self):
        return f"pond.DataFrame({list(self.ops)!r})"


class ParquetDataset:
    """Row ``i`` of Parquet files in pond (rows numbered file by file), read row-group aware:
    a batch fetches the projected column chunks of the row groups it touches, one batched
    read per storage node. Batches are ``pyarrow.RecordBatch`` objects, rows in the order
    asked. Opened lazily in each process (fork and spawn safe, picklable)."""

    def __init__(self, client, paths, columns=None):
        if isinstance(client, (str, os.PathLike)):
            client = Client(client)
        self.client = client
        self.paths = [paths] if isinstance(paths, str) else list(paths)
        self.columns = None if columns is None else list(columns)
        self._native = None
        self._pid = None

    def native(self):
        pid = os.getpid()
        if self._native is None or self._pid != pid:
            self._native = self.client.native().open_parquet(self.paths, self.columns)
            self._pid = pid
        return self._native

    def __getstate__(self):
        return {"client": self.client, "paths": self.paths, "columns": self.columns}

    def __setstate__(self, s):
        self.__init__(s["client"], s["paths"], s["columns"])

    def __len__(self):
        return len(self.native())

    @property
    def row_groups(self):
        return self.native().row_groups

    @property
    def bytes_requested(self):
        return self.native().bytes_requested

    def get_many(self, indices):
        """Rows ``indices`` (in that order) as one ``pyarrow.RecordBatch``."""
        return _record_batch(self.native().read_ipc([int(i) for i in indices]))

    def __getitem__(self, i):
        """Row ``i`` as a one-row ``pyarrow.RecordBatch``."""
        n = len(self)
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise IndexError(f"row {i} out of range: the dataset has {n} rows")
        return self.get_many([j])

    def reader(self, batch_size, **kw):
        """Yields ``(indices, pyarrow.RecordBatch)`` for this rank's epoch; keywords as
        :meth:`Dataset.reader`."""
        for indices, ipc in self.native().reader(batch_size, **kw):
            yield indices, _record_batch(ipc)


def connect(cluster_file):
    """Connects to the cluster described by ``cluster_file`` (what ``pond up`` writes)."""
    c = Client(cluster_file)
    c.native()
    return c


class Dataset:
    """Samples addressed by number; opened lazily in each process."""

    def __init__(self, client, path=None, paths=None, record_bytes=None):
        if isinstance(client, (str, os.PathLike)):
            client = Client(client)
        if (path is None) == (paths is None):
            raise ValueError("give either path (a packed dataset) or paths + record_bytes")
        if paths is not None and record_bytes is None:
            raise ValueError("fixed-size records need record_bytes")
        self.client = client
        self.path = path
        self.paths = paths
        self.record_bytes = record_bytes
        self._native = None
        self._pid = None

    def native(self):
        pid = os.getpid()
        if self._native is None or self._pid != pid:
            c = self.client.native()
            if self.path is not None:
                self._native = c.open_dataset(self.path)
            else:
                self._native = c.open_fixed(self.paths, self.record_bytes)
            self._pid = pid
        return self._native

    def __getstate__(self):
        return {
            "client": self.client,
            "path": self.path,
            "paths": self.paths,
            "record_bytes": self.record_bytes,
        }

    def __setstate__(self, s):
        self.__init__(s["client"], s["path"], s["paths"], s["record_bytes"])

    def __len__(self):
        return len(self.native())

    def __getitem__(self, i):
        return self.native()[i]

    def get_many(self, indices):
        """Many samples with one batched read per storage node."""
        return self.native().get_many(list(indices))

    def sample_len(self, i):
        return self.native().sample_len(i)

    @property
    def bytes_requested(self):
        return self.native().bytes_requested

    def reader(self, batch_size, **kw):
        """A :class:`BatchReader` yielding ``(indices, samples)`` for this rank's epoch.

        Keywords: seed, epoch, position (global, from a state dict), shuffle, drop_last, rank,
        world_size, prefetch (batches in flight), worker, workers, drop_last_batch.
        """
        return self.native().reader(batch_size, **kw)
