"""resnets.engine.estimate: the expected time said before a run (its step timed on a copy: the run itself is
unchanged by it), the evaluations the progress bar counts so its ETA is the whole run's, and the expected accuracy
of a recipe run unchanged."""

import pytest
import torch
import tqdm
from conftest import saved_weights

from resnets import config as C
from resnets.engine import build_run, train
from resnets.engine.estimate import evaluations, recipe_of, step_rate

TINY = dict(
    model="resnet8",
    dataset="synthetic",
    synthetic_samples=96,
    synthetic_classes=3,
    train_crop=32,
    batch_size=16,
    epochs=2,
    workers=0,
    device="cpu",
)


def _cfg(tmp_path, name, **kw):
    return C.resolve(overrides=dict(TINY, out=tmp_path, name=name, **kw))


def test_the_timed_steps_leave_the_run_as_it_was(tmp_path, capsys):
    """The same run with the estimate (progress on) and without it ends with bit-identical weights."""
    train(_cfg(tmp_path, "quiet", progress=False))
    train(_cfg(tmp_path, "shown", progress=True))
    out = capsys.readouterr().out
    assert "expected on this machine: about" in out and "img/s from 5 timed steps" in out
    assert "2 evaluations of" in out  # two epochs evaluated, the last one also the final evaluation
    a, b = (
        saved_weights(tmp_path / "quiet" / "model.safetensors"),
        saved_weights(tmp_path / "shown" / "model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_step_rate_is_measured_on_a_copy(tmp_path):
    from resnets import distributed

    run = build_run(_cfg(tmp_path, "r"), distributed.Context(device=torch.device("cpu")))
    try:
        before = {k: v.clone() for k, v in run.core.state_dict().items()}
        rng = torch.get_rng_state()
        rate, timed = step_rate(run)
        assert rate > 0 and timed == 5
        assert torch.equal(torch.get_rng_state(), rng)
        assert all(torch.equal(before[k], v) for k, v in run.core.state_dict().items())
    finally:
        run.lock.release()


@pytest.mark.parametrize(
    "kw, passes",
    [
        (dict(epochs=3), 3),  # the last epoch's evaluation is the final one: the same weights
        (dict(epochs=5, eval_every=2), 3),  # after epochs 2, 4 and the last
        (dict(epochs=2, tta="flip"), 1 + 2),  # the last epoch's pass scores each image and its mirror
        (dict(epochs=2.5, tta="flip"), 2 + 2),  # 3 epochs, the last cut short
        (dict(epochs=2, early_stop=3), 2 + 1),  # the final weights may be an earlier epoch's: evaluated again
        (dict(epochs=2, tta="flip", ema=True), 2 * 2 + 2 + 2),  # both weights, then the chosen ones with mirrors
        (dict(epochs=2, ema=True), 2 * 2 + 2),  # the EMA weights are evaluated beside the model's
    ],
)
def test_the_evaluations_a_run_makes_are_counted(tmp_path, kw, passes):
    from resnets import distributed

    run = build_run(_cfg(tmp_path, "r", **kw), distributed.Context(device=torch.device("cpu")))
    try:
        assert evaluations(run) == passes
    finally:
        run.lock.release()


def test_the_progress_bar_ends_at_its_total(tmp_path, monkeypatch):
    """The bar counts training batches and evaluations in batches' worth, and the run fills it exactly: an ETA
    from it is the whole run's, evaluations included."""
    bars = []

    class Recording(tqdm.tqdm):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            bars.append(self)

    from resnets.tasks import classification  # where the loop's evaluations are made for a classifier

    passes = []
    evaluate = classification.evaluate
    monkeypatch.setattr(classification, "evaluate", lambda *a, **k: passes.append(k["tta"]) or evaluate(*a, **k))
    monkeypatch.setattr(tqdm, "tqdm", Recording)
    result = train(_cfg(tmp_path, "bar", progress=True, tta="flip"))
    bar = bars[0]
    assert bar.total > 2 * (96 // 16) and bar.n == bar.total
    # the last epoch's evaluation was the final one: two passes over the validation set in two epochs, the second
    # with the mirror images, and its scores are the final ones
    assert passes == ["none", "flip"]
    assert result["history"][-1]["val_top1"] == result["top1"] and "tta" in result


def test_a_recipe_run_unchanged_is_recognised_and_a_changed_one_is_not():
    assert recipe_of(C.resolve("fashion-mnist", overrides=dict(out="/tmp/x", name="n", seed=3, workers=2))) == (
        "fashion-mnist"
    )
    assert recipe_of(C.resolve("fashion-mnist", overrides=dict(epochs=50))) is None
    assert recipe_of(C.resolve("fashion-mnist", overrides=dict(model="resnet56"))) is None
    assert recipe_of(C.resolve("paper-cifar")) is None  # no measured result recorded for it


def test_a_fraction_of_an_epoch_ends_the_last_epoch_early(tmp_path):
    """--epochs 1.5 trains one epoch and half of the next (96 images of batch 16: 6 + 3 steps), evaluated after
    each."""
    result = train(_cfg(tmp_path, "half", epochs=1.5))
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    assert [h["step"] for h in result["history"]] == [6, 9]
    assert "val_top1" in result["history"][-1]


def test_a_run_on_image_files_counts_the_loaders_decoding(tmp_path, monkeypatch):
    """Fine-tuning a folder of photos on a CPU: the loader's decoding shares the cores with the step, so the
    expected rate is the step's slowed by it (the estimate said the step's rate alone: a fine-tune took 1.5x its
    expected time); the timing draws nothing the run draws (its items are seeded by index)."""
    import numpy as np
    from PIL import Image

    from resnets import distributed
    from resnets.engine import estimate

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "photos" / c).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(
                tmp_path / "photos" / c / f"{i}.jpg"
            )
    cfg = C.resolve(overrides=dict(model="resnet8", dataset="imagefolder", data=str(tmp_path / "photos"), out=tmp_path,
                                   name="ft", train_crop=32, batch_size=8, epochs=1, workers=2, device="cpu"))  # fmt: skip
    run = build_run(cfg, distributed.Context(device=torch.device("cpu")))
    try:
        first = next(iter(run.train_loader))
        per_image = estimate.loader_seconds(run)
        assert per_image > 0
        monkeypatch.setattr(estimate, "step_rate", lambda run: (100.0, 5))
        monkeypatch.setattr(estimate, "loader_seconds", lambda run: 0.01)
        monkeypatch.setattr(estimate, "usable_cores", lambda: 2)
        rate, timed, said = estimate.training_rate(run)
        assert (timed, said) == (5, 0.01) and rate == pytest.approx(1 / (1 / 100 + 0.01 / 2))
        again = next(iter(run.train_loader))
        assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)  # nothing drawn
    finally:
        run.lock.release()
