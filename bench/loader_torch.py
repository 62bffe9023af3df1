#!/usr/bin/env python3
"""PyTorch DataLoader comparison for the loader benchmark (issue 6).

For 4 KiB, 64 KiB and 1 MiB samples (fixed-size records in one file), one shuffled epoch:

  (a) pond batch reader through pond.torch.IterableDataset + pond.torch.DataLoader, in the
      training process (its own threads prefetch), and again with the baselines' workers
  (b) a map-style DataLoader reading the same file through a pond FUSE mount (--mount)
  (c) a map-style DataLoader reading the same file on the local disk

all with the same permutation (pond.Sampler) and batch size, printing samples/s and MB/s and
the ratios. (c) runs twice: "cold" after posix_fadvise(DONTNEED) drops the file from the
page cache (the disk's buffered read), "warm" with the file cached (memory). The FUSE mount's
kernel page cache is dropped the same way before (b); the storage nodes' chunk files stay as
they are after the upload (in their page cache, as for pond's own reader).

Needs torch and the pond package in the Python that runs it, and a cluster; `bench/loader-torch.sh`
sets all of it up. By hand:

  pond up --dir /tmp/c --detach
  pond mount --cluster /tmp/c/cluster.toml --detach /mnt/pond     # for (b)
  python3 bench/loader_torch.py /tmp/c/cluster.toml --mount /mnt/pond [--quick]
"""

import argparse
import os
import sys
import tempfile
import time

try:
    import torch.utils.data as tud
except ImportError:
    sys.exit("loader_torch.py: torch is not installed (pip install torch); nothing measured")

import pond
import pond.torch as pt


class FileRecords(tud.Dataset):
    """Map-style dataset over a local (or FUSE-mounted) file of fixed-size records."""

    def __init__(self, path, record, n):
        self.path, self.record, self.n = path, record, n
        self.fd = None

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDONLY)
        return os.pread(self.fd, self.record, i * self.record)


class Order(tud.Sampler):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __iter__(self):
        s = pond.Sampler(self.n, seed=7)
        s.set_epoch(1)
        return iter(s.take_all())


def drop_cache(path):
    """Drops `path` from the kernel page cache (best effort: dirty pages are written first)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed(label, loader, want_bytes, before=None):
    if before:
        before()
    t = time.perf_counter()
    n = b = 0
    for batch in loader:
        n += len(batch)
        b += sum(len(x) for x in batch)
    dt = time.perf_counter() - t
    assert b == want_bytes, (label, b, want_bytes)
    print(f"  {label:<34} {n / dt:>10.0f} samples/s {b / dt / 1e6:>9.1f} MB/s")
    return n / dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cluster_file")
    ap.add_argument("--mount", help="a pond FUSE mount of the same cluster")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workers", type=int, default=4)
    a = ap.parse_args()
    c = pond.connect(a.cluster_file)
    c.mkdir("/bench-loader-py")
    total = (32 if a.quick else 256) << 20
    tmp = tempfile.mkdtemp()
    for record, batch in [(4 << 10, 256), (64 << 10, 64), (1 << 20, 8)]:
        n = total // record
        local = os.path.join(tmp, f"{record}.bin")
        with open(local, "wb") as f:
            for _ in range(total >> 20):
                f.write(os.urandom(1 << 20))
        remote = f"/bench-loader-py/{record}.bin"
        c.put(local, remote)
        print(f"{record >> 10} KiB samples: {n} samples, batch {batch}, {a.workers} workers")
        kw = dict(num_workers=a.workers, multiprocessing_context="fork") if a.workers else {}
        ds = pt.IterableDataset(c, paths=[remote], record_bytes=record, batch_size=batch, seed=7)
        ds.set_epoch(1)
        # (a) as the batch reader is meant to be used: in the training process, its own I/O
        # threads prefetching batches (a DataLoader's worker processes add a fork, a client
        # per worker and a pickle of every batch, for work the reader already does in
        # parallel); (a') the same dataset inside a DataLoader with the baselines' workers.
        rp = timed("pond batch reader, in-process", pt.DataLoader(ds), total)
        ds.set_epoch(1)
        rpw = timed(f"pond batch reader, {a.workers} workers", pt.DataLoader(ds, **kw), total)
        fixed = lambda path: tud.DataLoader(  # noqa: E731
            FileRecords(path, record, n), batch_size=batch, sampler=Order(n),
            collate_fn=lambda x: x, **kw)
        rf = None
        if a.mount:
            fpath = os.path.join(a.mount, remote.lstrip("/"))
            rf = timed("DataLoader over FUSE", fixed(fpath), total, lambda: drop_cache(fpath))
        rc = timed("DataLoader over local disk, cold", fixed(local), total,
                   lambda: drop_cache(local))
        rw = timed("DataLoader over local disk, warm", fixed(local), total)
        ratios = f"pond / local cold = {rp / rc:.2f}x, pond / local warm = {rp / rw:.2f}x"
        if rf:
            ratios += f", pond / FUSE = {rp / rf:.2f}x"
        ratios += f"; with {a.workers} workers: pond / local cold = {rpw / rc:.2f}x"
        if rf:
            ratios += f", pond / FUSE = {rpw / rf:.2f}x"
        else:
            ratios += " (no --mount: the FUSE row was not measured)"
        print("  " + ratios)
        c.remove(remote)
        os.remove(local)


if __name__ == "__main__":
    main()
