"""PyTorch datasets over pond.

- :class:`MapDataset`: ``dataset[i]`` is sample ``i`` (bytes, or ``transform(bytes)``);
  ``__getitems__`` makes a DataLoader batch one batched read per storage node.
- :class:`DistributedSampler`: pond's deterministic sharded order (same global order for any
  world size, no duplicates, exact resume) as a ``torch.utils.data.Sampler``.
- :class:`IterableDataset`: yields whole batches read by pond's batch reader (prefetch, one
  request per storage node per batch); DataLoader workers split the batches round-robin, so
  the batches arrive in the same order with any number of workers.
- :class:`DataLoader`: a ``torch.utils.data.DataLoader`` over an :class:`IterableDataset`
  that counts the batches it delivered: ``state_dict()`` / ``load_state_dict()`` resume
  exactly, with any number of workers.

All of them are safe with DataLoader workers started by fork or spawn: the pond connection is
made lazily in each process (see :mod:`pond`).
"""

import torch.distributed as dist
import torch.utils.data as tud

import pond


def _rank_world(rank, world_size):
    if rank is not None and world_size is not None:
        return rank, world_size
    if dist.is_available() and dist.is_initialized():
        r, w = dist.get_rank(), dist.get_world_size()
    else:
        r, w = 0, 1
    return (r if rank is None else rank), (w if world_size is None else world_size)


def _dataset(source, path, paths, record_bytes):
    if isinstance(source, (pond.Dataset, pond.ParquetDataset)):
        return source
    return pond.Dataset(source, path=path, paths=paths, record_bytes=record_bytes)


class MapDataset(tud.Dataset):
    """Map-style: sample ``i`` as bytes (or ``transform(bytes)``)."""

    def __init__(self, source, path=None, *, paths=None, record_bytes=None, transform=None):
        self.ds = _dataset(source, path, paths, record_bytes)
        self.transform = transform

    def __len__(self):
        return len(self.ds)

    def _t(self, b):
        return self.transform(b) if self.transform is not None else b

    def __getitem__(self, i):
        return self._t(self.ds[int(i)])

    def __getitems__(self, indices):
        return [self._t(b) for b in self.ds.get_many([int(i) for i in indices])]


class DistributedSampler(tud.Sampler):
    """pond's permutation, sharded over ranks; ``set_epoch`` each epoch as with PyTorch's.

    ``state_dict()`` counts the indices handed out (a DataLoader fetches ahead of the
    training loop; for exact resume with prefetch use :class:`IterableDataset` +
    :class:`DataLoader`, which count delivered batches).
    """

    def __init__(self, dataset, *, seed=0, shuffle=True, drop_last=False, rank=None, world_size=None):
        self.n = dataset if isinstance(dataset, int) else len(dataset)
        self.seed = seed
        self.rank, self.world_size = _rank_world(rank, world_size)
        self._s = pond.Sampler(
            self.n, seed=seed, shuffle=shuffle, drop_last=drop_last,
            rank=self.rank, world_size=self.world_size,
        )
        self.epoch = 0
        self._resume = None

    def __len__(self):
        return len(self._s)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        self._s.set_epoch(self.epoch)
        if self._resume is not None:
            self._s.load_state_dict(self._resume)
            self._resume = None
        while True:
            try:
                yield next(self._s)
            except StopIteration:
                return

    def state_dict(self):
        return self._s.state_dict()

    def load_state_dict(self, sd):
        if sd["seed"] != self.seed:
            raise ValueError(f"state has seed {sd['seed']}, this sampler {self.seed}")
        self.epoch = sd["epoch"]
        self._resume = dict(sd)


class IterableDataset(tud.IterableDataset):
    """Yields this rank's batches of an epoch: ``collate(samples)`` (default: the list of
    samples, each ``transform(bytes)`` if given), or ``(indices, ...)`` with ``with_indices``.

    Over a :class:`pond.ParquetDataset` the samples of a batch are one
    ``pyarrow.RecordBatch``: ``transform`` (then ``collate``) gets the whole record batch.

    Use with ``pond.torch.DataLoader`` (or a plain DataLoader with ``batch_size=None``).
    """

    def __init__(
        self, source, path=None, *, paths=None, record_bytes=None, batch_size,
        seed=0, shuffle=True, drop_last=False, rank=None, world_size=None, prefetch=4,
        drop_last_batch=False, transform=None, collate=None, with_indices=False,
    ):
        self.ds = _dataset(source, path, paths, record_bytes)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.rank, self.world_size = _rank_world(rank, world_size)
        self.prefetch = prefetch
        self.drop_last_batch = drop_last_batch
        self.transform = transform
        self.collate = collate
        self.with_indices = with_indices
        self.epoch = 0
        # Global position (all ranks) where the next iteration starts.
        self.position = 0

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.position = 0

    def rank_len(self):
        """Samples of this rank per epoch."""
        return len(pond.Sampler(
            len(self.ds), seed=self.seed, shuffle=self.shuffle, drop_last=self.drop_last,
            rank=self.rank, world_size=self.world_size,
        ))

    def __len__(self):
        left = self.rank_len() - self.position // self.world_size
        if self.drop_last_batch:
            return left // self.batch_size
        return -(-left // self.batch_size)

    def __iter__(self):
        info = tud.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        reader = self.ds.reader(
            self.batch_size, seed=self.seed, epoch=self.epoch, position=self.position,
            shuffle=self.shuffle, drop_last=self.drop_last, rank=self.rank,
            world_size=self.world_size, prefetch=self.prefetch, worker=worker,
            workers=workers, drop_last_batch=self.drop_last_batch,
        )
        rows = isinstance(self.ds, pond.ParquetDataset)
        for indices, samples in reader:
            if self.transform is not None:
                samples = self.transform(samples) if rows else [self.transform(s) for s in samples]
            out = self.collate(samples) if self.collate is not None else samples
            yield (indices, out) if self.with_indices else out


class DataLoader(tud.DataLoader):
    """A DataLoader over a pond :class:`IterableDataset` that can resume exactly.

    Batches come from the workers round-robin (``in_order``), which is the single-worker
    sequence, so "batches delivered" pins the position whatever ``num_workers`` is.
    ``persistent_workers`` is refused: workers would keep a stale start position.
    """

    def __init__(self, dataset, **kw):
        if not isinstance(dataset, IterableDataset):
            raise TypeError("pond.torch.DataLoader takes a pond.torch.IterableDataset")
        if kw.get("persistent_workers"):
            raise ValueError("persistent_workers would keep a stale resume position")
        if kw.get("batch_size", None) is not None:
            raise ValueError("the dataset makes the batches: leave batch_size unset")
        kw["batch_size"] = None
        super().__init__(dataset, **kw)
        self._delivered = 0
        self._start = 0

    def __iter__(self):
        ds = self.dataset
        self._start = ds.position
        self._delivered = 0
        for b in super().__iter__():
            self._delivered += 1
            yield b

    def state_dict(self):
        ds = self.dataset
        w = ds.world_size
        local = min(self._start // w + self._delivered * ds.batch_size, ds.rank_len())
        return {"seed": ds.seed, "epoch": ds.epoch, "position": local * w}

    def load_state_dict(self, sd):
        ds = self.dataset
        if sd["seed"] != ds.seed:
            raise ValueError(f"state has seed {sd['seed']}, this dataset {ds.seed}")
        if sd["position"] % ds.world_size:
            raise ValueError(
                f"position {sd['position']} is not a multiple of the world size {ds.world_size}"
            )
        ds.epoch = sd["epoch"]
        ds.position = sd["position"]
        self._start = ds.position
        self._delivered = 0


__all__ = ["MapDataset", "DistributedSampler", "IterableDataset", "DataLoader"]
