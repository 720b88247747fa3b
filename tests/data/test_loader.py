"""The loaders (data/loader.py): the global batch split over ranks, resumable mid-epoch, every evaluation sample
once, unreadable samples counted, the same batches whatever the number of workers, and the choice of loader."""

import pytest
import torch
from torchvision.io import write_png

from resnets import data as D
from resnets.data.loader import Collate, EvalBatches, TrainBatches


def test_train_batches_split_the_global_batch_over_ranks_and_resume():
    one = list(TrainBatches(100, 8, seed=3))
    parts = [list(TrainBatches(100, 8, seed=3, rank=r, world=2)) for r in range(2)]
    assert len(one) == 12
    for b in range(12):
        assert sorted(parts[0][b] + parts[1][b]) == sorted(one[b])
    s = TrainBatches(100, 8, seed=3)
    s.set_epoch(0, start=5)
    assert list(s) == one[5:]
    s.set_epoch(1)
    assert [i % 100 for i in next(iter(s))] != [i % 100 for i in one[0]]


def test_eval_batches_cover_every_sample_once():
    seen = [i for r in range(3) for b in EvalBatches(10, 4, r, 3) for i in b]
    assert sorted(seen) == list(range(10))


def test_collate_counts_bad_samples():
    c = Collate()
    batch = c([(torch.zeros(1, 2, 2, dtype=torch.uint8), 1), D.BadSample("x.jpg", "truncated")])
    assert batch.images.shape == (1, 1, 2, 2) and batch.bad == [("x.jpg", "truncated")]


def _tensor_set(n=40, classes=4):
    from resnets.data.datasets import TensorDataset

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 12, 12), generator=g, dtype=torch.uint8)
    return TensorDataset(images, torch.arange(n) % classes, [str(c) for c in range(classes)])


def test_host_batches_are_the_same_whatever_the_number_of_workers_and_resume_mid_epoch():
    """Every augmentation draw is a function of (seed, epoch, index): 0 or 2 worker processes, from the start or
    from batch 3, give the same pixels."""
    from resnets.data.loader import make_train_loader

    ds = _tensor_set()
    kw = dict(kind="host", device=torch.device("cpu"), batch_size=8, seed=5, augment="crop-flip", crop=12, mean=(0.5,))
    runs = []
    for workers in (0, 2):
        loader = make_train_loader(ds, workers=workers, **kw)
        loader.set_epoch(1)
        runs.append([(b.images.clone(), b.labels.clone()) for b in loader])
    assert len(runs[0]) == len(loader) == 5
    for (xa, ya), (xb, yb) in zip(*runs):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    resumed = make_train_loader(ds, workers=0, **kw)
    resumed.set_epoch(1, start=3)
    assert [torch.equal(b.images, x) for b, (x, _) in zip(resumed, runs[0][3:])] == [True, True]
    other = make_train_loader(ds, workers=0, **kw)
    other.set_epoch(2)
    assert not torch.equal(next(iter(other)).images, runs[0][0][0])  # a new epoch draws anew


def test_choose_loader_and_its_refusal(tmp_path):
    from resnets.data.loader import choose_loader
    from resnets.errors import ResnetsError

    cpu, ds = torch.device("cpu"), _tensor_set()
    assert choose_loader("auto", ds, cpu) == "device"  # in memory and it fits: augmented as a batch
    assert choose_loader("auto", ds, cpu, augment_ok=False) == "host"
    assert choose_loader("host", ds, cpu) == "host"
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        write_png(torch.zeros(3, 8, 8, dtype=torch.uint8), str(tmp_path / cls / "x.png"))
    files = D.image_folder(tmp_path)
    assert choose_loader("auto", files, cpu) == "host"  # files on a CPU: decoded and augmented in workers
    assert choose_loader("device", files, cpu) == "device"  # asked for: the batch path, on the CPU
    with pytest.raises(ResnetsError, match="loader must be one of auto, host, device; got 'gpu'"):
        choose_loader("gpu", ds, cpu)


def test_eval_loader_gives_every_image_once_in_order():
    from resnets.data.loader import make_eval_loader

    ds = _tensor_set(n=19)
    loader = make_eval_loader(ds, kind="host", device=torch.device("cpu"), batch_size=8, resize=12, crop=12)
    labels = torch.cat([torch.as_tensor(b.labels) for b in loader])
    assert len(loader) == 3 and labels.tolist() == ds.targets
