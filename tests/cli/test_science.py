"""`resnets reproduce` and `resnets data` on the command line (cli/science.py)."""

import pytest
from conftest import run_cli

from resnets.data import sources


@pytest.mark.skipif(sources.find_fashion_mnist() is None, reason="Fashion-MNIST is not installed")
def test_cli_on_fashion_mnist_and_bad_input(tmp_path):
    code, out, err = run_cli(
        "reproduce",
        "cifar-table",
        "--budget",
        10,
        "--depths",
        20,
        "--out",
        tmp_path,
        "--no-progress",
        "--set",
        "limit_train=256",
        "--set",
        "limit_val=100",
        "--set",
        "batch_size=32",
    )
    assert code == 0, err
    assert "| ResNet-20 | 0.27M |" in out and (tmp_path / "cifar_table.md").is_file()
    for args, needle in (
        (("degradation", "--budget", "lots"), "budget must be one of"),
        (("degradation", "--dataset", "mnist"), "dataset must be one of"),
        (("cifar-table", "--depths", "21"), "CIFAR ResNet depths"),
        (("degradation", "--dataset", "cifar10", "--data", tmp_path / "nope.tar.gz"), "nope.tar.gz"),
    ):
        code, _, err = run_cli("reproduce", *args, "--out", tmp_path / "bad")
        assert code == 2 and "Traceback" not in err and needle in err, err
        assert len(err.strip().splitlines()) == 1


def test_data_lists_finds_and_refuses_in_one_line(tmp_path, monkeypatch):
    from resnets.data.registry import DATASETS

    code, out, err = run_cli("data", "--list")
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines()] == list(DATASETS)
    found = sources.find_fashion_mnist()
    if found is not None:
        code, out, err = run_cli("data", "fashion-mnist")
        assert code == 0 and out.strip() == str(found), err
    monkeypatch.setenv("RESNETS_DATA", str(tmp_path / "home"))  # an empty data home, and no download asked for
    code, out, err = run_cli("data", "cifar10", "--path", tmp_path / "nope")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "--download" in err and out == "" and not (tmp_path / "nope").exists()


def test_data_shapes_writes_the_set_and_says_how_to_train_on_it(tmp_path):
    code, out, err = run_cli(
        "data", "shapes", "--out", tmp_path / "s", "--train", "3", "--val", "2", "--size", "48", "--no-progress"
    )
    assert code == 0, err
    assert "train: 3 images" in out and "val: 2 images" in out and "--recipe finetune-detection" in out
    assert (tmp_path / "s" / "val" / "instances.json").is_file() and len(
        list((tmp_path / "s" / "train" / "masks").iterdir())
    ) == 3
    code, _, err = run_cli("data", "shapes", "--out", tmp_path / "s", "--no-progress")
    assert code == 2 and "not an empty folder" in err
    code, _, err = run_cli("data", "shapes", "--no-progress")
    assert code == 2 and "--out DIR" in err


def test_data_shapes_crops_print_a_pretraining_command_that_runs(tmp_path):
    code, out, err = run_cli(
        "data", "shapes", "--out", tmp_path / "s", "--train", "6", "--val", "3", "--size", "48", "--crops", "24",
        "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    line = next(x for x in out.splitlines() if x.startswith("pretrain a backbone"))
    command = line.split(": ", 1)[1].split()
    assert command[:2] == ["resnets", "train"] and str(tmp_path / "s" / "crops") in command
    code, printed, err = run_cli(
        *command[1:], "--epochs", "1", "--batch-size", "8", "--workers", "0", "--no-progress", "--out", tmp_path / "r"
    )
    assert code == 0, err
    assert (tmp_path / "r").is_dir() and list((tmp_path / "r").glob("*/model.safetensors"))
    code, _, err = run_cli("data", "shapes", "--out", tmp_path / "t", "--crops", "4", "--no-progress")
    assert code == 2 and "--crops" in err and not (tmp_path / "t").exists()
