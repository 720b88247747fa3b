"""resnets.engine.outputs: what a run writes as it goes (metrics CSV, TensorBoard scalars)."""

import json

import pytest
from conftest import TINY_RUN, run_cli


def test_the_epochs_are_also_a_csv_and_tensorboard_scalars(tmp_path):
    import csv

    code, _, err = run_cli("train", *TINY_RUN, "--out", tmp_path, "--name", "r", "--epochs", 2, "--tensorboard")
    assert code == 0, err
    jsonl = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    with open(tmp_path / "r" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(jsonl) == 2
    for row, rec in zip(rows, jsonl):
        assert {k: float(v) for k, v in row.items() if v} == pytest.approx({k: float(v) for k, v in rec.items()})
    # TensorBoard's own reader finds every number of every epoch, at the epoch as its step
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = event_accumulator.EventAccumulator(str(tmp_path / "r" / "tensorboard"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {k for k in jsonl[0] if k != "epoch"}
    for key in acc.Tags()["scalars"]:
        events = acc.Scalars(key)
        assert [e.step for e in events] == [r["epoch"] for r in jsonl]
        assert [e.value for e in events] == pytest.approx([r[key] for r in jsonl], rel=1e-6)
