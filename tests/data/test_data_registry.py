"""resnets.data.registry: one table of datasets feeds the config, the command line and evaluation."""

import pytest

from resnets.errors import ResnetsError


def test_one_dataset_registry_feeds_the_config_the_cli_and_evaluation(tmp_path):
    from conftest import run_cli

    from resnets.cli import build_parser
    from resnets.config import RULES
    from resnets.data.registry import DATASETS, get_dataset

    assert RULES["dataset"].choices == tuple(DATASETS)
    eval_choices = next(
        a for a in build_parser()._subparsers._group_actions[0].choices["eval"]._actions if a.dest == "dataset"
    ).choices
    assert set(eval_choices) == {n for n, s in DATASETS.items() if s.kind != "synthetic"}
    code, out, _ = run_cli("data", "--list")
    assert code == 0 and [line.split()[0] for line in out.splitlines()] == list(DATASETS)
    with pytest.raises(ResnetsError, match="did you mean cifar10"):
        get_dataset("cifar-10")
    fm = get_dataset("fashion-mnist")
    assert (fm.channels, fm.native, fm.mean) == (1, 28, (0.2860,))
    # image files: train/ and val/, or a single folder (evaluated whole, or split for training)
    from PIL import Image

    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / "f" / split / c).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / "f" / split / c / "x.png")
    spec = get_dataset("imagefolder")
    assert spec.load("test", str(tmp_path / "f")).samples[0][0].startswith(str(tmp_path / "f" / "val"))
    assert spec.load("test", str(tmp_path / "f" / "train")) is None
    assert spec.evaluation(str(tmp_path / "f" / "train")).classes == ["a", "b"]
