"""The state of a run as one object (engine/state.py): what it says of itself, and every field of where it stands
carried whole through a checkpoint."""

import torch

from resnets import distributed
from resnets.config import resolve
from resnets.engine.checkpoint import restore, state_dict
from resnets.engine.run import build_run

TINY = dict(model="resnet8", dataset="synthetic", synthetic_samples=64, synthetic_classes=3, train_crop=16)
TINY.update(batch_size=16, workers=0, progress=False, device="cpu", epochs=2)

# where a run stands (state.Run's fields after `net`): each must come back from a checkpoint, or a resumed run
# would report or decide differently from the uninterrupted one
WHERE = {"epoch": 1, "batch": 2, "step": 6, "best": 41.5, "since_best": 3, "skipped": 4}
WHERE.update(history=[{"epoch": 1, "val_top1": 41.5}], curve=[{"step": 5, "train_error": 0.6}])
WHERE.update(partial={"sums": [1.0, 2.0, 3.0]})


def test_a_run_knows_its_classes_and_when_it_is_done(tmp_path):
    run = build_run(resolve(overrides=dict(TINY, out=tmp_path, name="a")), distributed.setup("cpu"))
    try:
        assert run.classes == run.bundle.classes and len(run.classes) == 3
        assert run.total_steps == 2 * run.steps_per_epoch == 8 and not run.done
        run.step = run.total_steps
        assert run.done
    finally:
        run.lock.release()


def test_where_a_run_stands_comes_back_whole_from_a_checkpoint(tmp_path):
    ctx = distributed.setup("cpu")
    a = build_run(resolve(overrides=dict(TINY, out=tmp_path, name="a")), ctx)
    b = build_run(resolve(overrides=dict(TINY, out=tmp_path, name="b", seed=1)), ctx)
    try:
        for k, v in WHERE.items():
            setattr(a, k, v)
        with torch.no_grad():
            next(a.core.parameters()).add_(1.0)
        restore(b, state_dict(a, WHERE["epoch"], WHERE["batch"]))
        assert {k: getattr(b, k) for k in WHERE} == WHERE
        assert all(torch.equal(x, y) for x, y in zip(a.core.state_dict().values(), b.core.state_dict().values()))
    finally:
        a.lock.release()
        b.lock.release()
