"""resnets.data.batching: the global batch split over ranks, resumable mid-epoch, every evaluation sample once, and
unreadable samples counted."""

import torch

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
