"""PyTorch datasets over pond. Skipped (loudly, with the reason) when torch is missing."""

import pytest

torch = pytest.importorskip(
    "torch", reason="torch is not installed: PyTorch dataset tests SKIPPED (pip install torch)"
)

import pond  # noqa: E402
import pond.torch as pt  # noqa: E402
from conftest import sample_bytes  # noqa: E402


def _as_list(batch):
    """collate_fn keeping the samples as they are (module level: spawn pickles it)."""
    return batch


@pytest.mark.parametrize("workers,method", [(0, None), (2, "fork"), (2, "spawn")])
def test_map_dataset_with_workers(cluster, packed, workers, method):
    ds = pt.MapDataset(cluster, packed)
    sampler = pt.DistributedSampler(ds, seed=5, rank=0, world_size=1)
    kw = {"multiprocessing_context": method} if workers else {}
    dl = torch.utils.data.DataLoader(ds, batch_size=50, sampler=sampler, num_workers=workers,
                                     collate_fn=_as_list, **kw)
    got = [s for batch in dl for s in batch]
    order = pond.Sampler(500, seed=5).take_all()
    assert got == [sample_bytes(i) for i in order]


@pytest.mark.parametrize("workers,method", [(0, None), (3, "fork"), (2, "spawn")])
def test_iterable_dataset_resume_with_workers(cluster, packed, workers, method):
    def make():
        ds = pt.IterableDataset(cluster, packed, batch_size=20, seed=9, rank=1, world_size=2,
                                with_indices=True)
        kw = {"multiprocessing_context": method} if workers else {}
        return pt.DataLoader(ds, num_workers=workers, **kw)

    full = [i for ix, _ in make() for i in ix]
    assert full == pond.Sampler(500, seed=9, rank=1, world_size=2).take_all()
    dl = make()
    it = iter(dl)
    first = []
    for _ in range(4):
        ix, samples = next(it)
        assert samples == [sample_bytes(i) for i in ix]
        first.extend(ix)
    sd = dl.state_dict()
    assert sd["position"] == 4 * 20 * 2
    del it
    dl2 = make()
    dl2.load_state_dict(sd)
    rest = [i for ix, _ in dl2 for i in ix]
    assert first + rest == full
