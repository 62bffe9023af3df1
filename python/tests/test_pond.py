"""The pond Python package against a real cluster: files, datasets, sampler, batch reader,
fork and spawn safety."""

import multiprocessing as mp
import os
import pickle

import pytest

import pond
from conftest import sample_bytes


def test_files_roundtrip(cluster):
    c = pond.connect(cluster)
    c.mkdir("/py/files")
    data = bytes(range(256)) * 1000
    c.write_file("/py/files/a", data)
    assert c.read_file("/py/files/a") == data
    assert c.pread("/py/files/a", 1000, 10) == data[1000:1010]
    st = c.stat("/py/files/a")
    assert st["size"] == len(data) and st["kind"] == "file"
    assert "a" in c.listdir("/py/files")
    assert c.exists("/py/files/a")
    c.remove("/py/files/a")
    assert not c.exists("/py/files/a")
    with pytest.raises(FileNotFoundError):
        c.read_file("/py/files/missing")


def test_dataset_samples_exact(cluster, packed):
    ds = pond.connect(cluster).dataset(packed)
    assert len(ds) == 500
    for i in [0, 1, 250, 499, -1]:
        assert ds[i] == sample_bytes(i % 500)
    got = ds.get_many([5, 3, 499, 5])
    assert got == [sample_bytes(i) for i in [5, 3, 499, 5]]
    with pytest.raises(IndexError, match="out of range"):
        ds[500]


def test_reader_epoch_ranks_and_resume(cluster, packed):
    ds = pond.connect(cluster).dataset(packed)
    seen = []
    for rank in range(3):
        before = ds.bytes_requested
        total = 0
        for indices, samples in ds.reader(32, seed=7, epoch=2, rank=rank, world_size=3,
                                          drop_last=True, prefetch=3):
            for i, s in zip(indices, samples):
                assert s == sample_bytes(i)
                total += len(s)
            seen.extend(indices)
        assert ds.bytes_requested - before == total, "no readahead"
    assert sorted(seen) == sorted(set(seen)) and len(seen) == 498
    # Resume after 3 batches yields exactly the rest.
    full = [i for ix, _ in ds.reader(16, seed=1) for i in ix]
    r = ds.reader(16, seed=1)
    first = [i for _ in range(3) for i in next(r)[0]]
    sd = r.state_dict()
    assert sd == {"seed": 1, "epoch": 0, "position": 48}
    rest = [i for ix, _ in ds.reader(16, seed=1, position=sd["position"]) for i in ix]
    assert first + rest == full
    assert sorted(full) == list(range(500))


def test_sampler_pure():
    orders = []
    for w in (1, 2, 5):
        ranks = [pond.Sampler(100, seed=3, rank=r, world_size=w, drop_last=True).take_all()
                 for r in range(w)]
        orders.append([ranks[r][k] for k in range(len(ranks[0])) for r in range(w)])
    assert orders[0] == orders[1] == orders[2]
    s = pond.Sampler(10, seed=3)
    for _ in range(4):
        next(s)
    b = s.state_bytes()
    t = pond.Sampler(10, seed=3)
    t.load_state_bytes(b)
    assert t.take_all() == pond.Sampler(10, seed=3).take_all()[4:]
    bad = bytearray(b)
    bad[5] ^= 1
    with pytest.raises(ValueError, match="checksum"):
        t.load_state_bytes(bytes(bad))


def test_corrupt_index_is_a_clear_error(cluster, packed):
    c = pond.connect(cluster)
    raw = bytearray(c.read_file(packed + "/index.pidx"))
    raw[-20] ^= 0xFF
    c.mkdir("/py/bad")
    c.write_file("/py/bad/index.pidx", bytes(raw))
    with pytest.raises(pond.CorruptIndexError, match="checksum"):
        len(c.dataset("/py/bad"))


def _child_read(ds, q):
    try:
        q.put([ds[i] == sample_bytes(i) for i in (0, 7, 499)])
    except Exception as e:  # reported to the parent
        q.put(repr(e))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_safe_across_fork_and_spawn(cluster, packed, method):
    ds = pond.connect(cluster).dataset(packed)
    assert ds[1] == sample_bytes(1)  # the parent's runtime is live at fork time
    ctx = mp.get_context(method)
    q = ctx.Queue()
    p = ctx.Process(target=_child_read, args=(ds, q))
    p.start()
    out = q.get(timeout=120)
    p.join(60)
    assert out == [True, True, True], out
    assert p.exitcode == 0
    assert ds[2] == sample_bytes(2), "the parent still works"
    # Pickles without the native handle.
    ds2 = pickle.loads(pickle.dumps(ds))
    assert ds2[3] == sample_bytes(3)


def test_native_object_refuses_use_after_fork(cluster, packed):
    native = pond.connect(cluster).dataset(packed).native()
    ctx = mp.get_context("fork")
    q = ctx.Queue()

    def child():
        try:
            len(native)
            q.put("no error")
        except RuntimeError as e:
            q.put(str(e))

    p = ctx.Process(target=child)
    p.start()
    msg = q.get(timeout=60)
    p.join(30)
    assert "after fork" in msg, msg


def test_clients_made_on_both_sides_of_a_fork_do_not_collide(cluster):
    """A client made in a forked child and one made next in the parent must be distinct
    clients to meta and storage. They once drew their ids from a thread-local RNG whose state
    the child inherits, so both got the same id, and meta's exactly-once cache answered the
    parent's requests with the replies to the child's: the parent's mkdir "succeeded" without
    creating anything (seen after a PyTorch DataLoader with fork workers)."""
    pond.connect(cluster).mkdir("/py/fork")  # a client in the parent before the fork
    pid = os.fork()
    if pid == 0:
        try:
            pond.connect(cluster).mkdir("/py/fork/child")
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    c = pond.connect(cluster)
    c.mkdir("/py/fork/parent")
    c.write_file("/py/fork/parent/a", b"made after the fork")
    assert sorted(c.listdir("/py/fork")) == ["child", "parent"]
