"""resnets.config: every key has one bounded rule, config files and flags in their order of precedence, and values that
cannot run refused before anything is written.

The rules are tested through the command line's own parser and `config.resolve` (what `resnets train` runs before it
writes anything), a few milliseconds a case; a few cases of each kind also go through the whole `resnets train`
command (exit code 2, one line, no folder), which costs a parser build and imports per call."""

import math

import pytest
import torch
from conftest import TINY_RUN, run_cli

import resnets
from resnets import config as C


def _one_line(code, err, needle):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err


def _outside_cases():
    hints = C._fields()
    for key, rule in C.RULES.items():
        for v in rule.outside():
            if hints[key] in (int, int | None) and isinstance(v, float) and not math.isfinite(v):
                v = "nan"  # an int key: not a number at all
            yield key, v


@pytest.fixture(scope="module")
def train_parser():
    """`resnets`'s parser, built once (each build reads every config key's rule and help)."""
    from resnets.cli import build_parser

    return build_parser()


def _refused_as_train_would(parser, tmp_path, flag, value) -> resnets.ResnetsError:
    """`resnets train TINY_RUN --out DIR FLAG VALUE` up to the point where it writes anything: parsed by the
    command line's parser (the value reaches the config as the text typed), then resolved as `resnets train` resolves
    it. Returns the error it must raise (a ResnetsError: the command prints it as one line and exits 2)."""
    from resnets.cli.options import overrides_of

    args = parser.parse_args(["train", *map(str, TINY_RUN), "--out", str(tmp_path / "runs"), flag, str(value)])
    overrides = overrides_of(args)
    assert overrides[flag[2:].replace("-", "_")] == str(value)  # the flag is the config key's, its value the text
    with pytest.raises(resnets.ResnetsError) as e:
        C.resolve(args.recipe, args.config, overrides)
    assert not (tmp_path / "runs").exists()  # not even the --out folder
    return e.value


def test_every_config_key_has_one_rule():
    import dataclasses

    assert {f.name for f in dataclasses.fields(C.TrainConfig)} == set(C.RULES)


@pytest.mark.parametrize("key, value", list(_outside_cases()))
def test_a_value_just_outside_its_range_is_one_line_and_writes_nothing(train_parser, tmp_path, key, value):
    flag = "--" + key.replace("_", "-")
    error = _refused_as_train_would(train_parser, tmp_path, flag, value)
    assert str(error).strip(), f"{flag} {value!r}: an empty message"


# the values a hostile review found to be tracebacks (some after config.json was written, so the folder stayed and
# resume repeated the traceback), or to allocate tens of gigabytes
CANNOT_RUN = [
    ("--epochs", "1e400"),
    ("--seed", "1e20"),
    ("--lr", "1e308"),
    ("--weight-decay", "1e308"),
    ("--gamma", "1e308"),
    ("--warmup-epochs", "1e308"),
    ("--pad", "1e9"),
    ("--train-crop", "1e6"),
    ("--synthetic-samples", "1e12"),
    ("--synthetic-classes", "1e9"),
    ("--device", "mps"),
    ("--device", "cuda:x"),
    ("--mixup", "1e-320"),
    ("--cutmix", "1e-320"),
    ("--batch-size", "1e30"),
    ("--in-chans", "100000"),
]


@pytest.mark.parametrize("flag, value", CANNOT_RUN)
def test_values_that_cannot_run_are_refused_before_anything_is_written(train_parser, tmp_path, flag, value):
    if value == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    _refused_as_train_would(train_parser, tmp_path, flag, value)


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--epochs", "-1"),  # an int below its range
        ("--lr", "nan"),  # a float that is not finite
        ("--batch-size", "nan"),  # an int key given a value that is no whole number
        ("--optimizer", "not-a-choice"),  # a choice
        ("--milestones", "0"),  # a list's item
        ("--device", "cuda:x"),  # a device this machine lacks
        ("--epochs", "1e400"),  # an overflow
        ("--synthetic-samples", "1e12"),  # tens of gigabytes
    ],
)
def test_the_train_command_refuses_in_one_line_and_writes_nothing(tmp_path, flag, value):
    """The whole command, for a few cases of each kind above: exit code 2, one line, no traceback, no folder."""
    code, _, err = run_cli("train", *TINY_RUN, "--out", tmp_path / "runs", flag, value)
    assert code == 2, f"{flag} {value!r} was accepted: {err}"
    assert len([line for line in err.splitlines() if line.strip()]) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists()


def test_synthetic_data_is_bounded_by_its_memory_and_inference_devices_are_checked(tmp_path):
    code, _, err = run_cli(
        "train", *TINY_RUN, "--out", tmp_path, "--synthetic-samples", "1000000", "--train-crop", "512"
    )
    _one_line(code, err, "GiB; at most 8 GiB")
    for device in ("cuda:x", "cuda:7", "tpu"):
        if (
            device.startswith("cuda")
            and torch.cuda.is_available()
            and device == "cuda:7"
            and torch.cuda.device_count() > 7
        ):
            continue
        code, _, err = run_cli("predict", "x.png", "--weights", "resnet18", "--device", device)
        assert code == 2 and "device" in err and len(err.strip().splitlines()) == 1, err


def test_config_files_and_precedence(tmp_path):
    (tmp_path / "c.toml").write_text("epochs = 7\nlr = 0.05\nmilestones = [10, 20]\n")
    (tmp_path / "c.yaml").write_text("epochs: 9\nmixup: 0.2\n")
    cfg = C.resolve("paper-cifar", tmp_path / "c.toml", {"lr": "0.3"})
    assert (cfg.epochs, cfg.lr, cfg.milestones, cfg.weight_decay) == (7, 0.3, [10, 20], 1e-4)
    assert C.resolve(None, tmp_path / "c.yaml").mixup == 0.2
    (tmp_path / "bad.toml").write_text("epoks = 3\n")
    with pytest.raises(resnets.ResnetsError, match="unknown config key 'epoks'.*epochs"):
        C.resolve(None, tmp_path / "bad.toml")
    tv2 = C.resolve("tv2-imagenet", overrides={"data": "imagenet"})
    assert (tv2.train_crop, tv2.eval_resize, tv2.label_smoothing, tv2.mixup, tv2.cutmix, tv2.ema) == (
        176,
        232,
        0.1,
        0.2,
        1.0,
        True,
    )


def _config_file(path, values: dict):
    """`values` written as the file's format says (.toml, .yaml or .json), each string as JSON writes it (a valid
    TOML and YAML string too)."""
    import json

    if path.suffix == ".json":
        path.write_text(json.dumps(values))
    else:
        sep = " = " if path.suffix == ".toml" else ": "
        path.write_text("".join(f"{k}{sep}{json.dumps(v)}\n" for k, v in values.items()))
    return path


@pytest.mark.parametrize("suffix", [".toml", ".yaml", ".json"])
@pytest.mark.parametrize(
    "key, value, what",
    [
        ("data", "pipe:touch {marker}; cat shard-000000.tar", "runs a command"),
        ("val_data", "pipe:touch {marker}; cat val-000000.tar", "runs a command"),
        ("data", "https://127.0.0.1:9/train-{{000000..000003}}.tar", "fetches a URL"),
        ("weights", "http://127.0.0.1:9/model.safetensors", "fetches a URL"),
        ("out", "{tmp}/elsewhere", "writes outside the working folder"),
        ("out", "../elsewhere", "writes outside the working folder"),
    ],
)
def test_a_config_file_never_runs_fetches_or_writes_outside(
    train_parser, tmp_path, monkeypatch, suffix, key, value, what
):
    """Issue 36: `dataset = "wds"` with `data = "pipe:touch pwned; ..."` in a --config file ran the command. A value
    that runs a command, fetches a URL or writes outside the working folder is taken only from the command line:
    from a file it is one line, and nothing ran (no marker file) nor was written. Resolved as `resnets train`
    resolves it for every format; the whole command run for the TOML file of each case."""
    from resnets.cli.options import overrides_of

    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED"
    value = value.format(marker=marker, tmp=tmp_path)
    path = _config_file(tmp_path / f"evil{suffix}", {"dataset": "wds", key: value})
    out = [] if key == "out" else ["--out", tmp_path / "runs"]
    argv = ["train", "--config", path, "--model", "resnet20", "--epochs", "1", *out]
    args = train_parser.parse_args([str(a) for a in argv])
    with pytest.raises(resnets.ResnetsError) as e:
        C.resolve(args.recipe, args.config, overrides_of(args))
    assert f"evil{suffix}'s {key} {what}" in str(e.value) and f"give --{key.replace('_', '-')} there" in str(e.value)
    if suffix == ".toml":
        code, _, err = run_cli(*argv)
        _one_line(code, err, f"evil{suffix}'s {key} {what}")
        assert f"give --{key.replace('_', '-')} there" in err
    assert not marker.exists() and not (tmp_path / "runs").exists() and not (tmp_path / "elsewhere").exists()
    # the same value on the command line is the user's own: taken
    said = {"dataset": "wds", "data": "pipe:cat x.tar", key: value}
    cfg = C.resolve(None, None, said)
    assert getattr(cfg, key) == value and not marker.exists()  # (resolving runs nothing)
    # ... and a command line that gives the key replaces the file's value, which is then never used
    assert getattr(C.resolve(None, path, said), key) == value


def test_a_recipe_is_held_to_the_rule_and_plain_values_from_files_are_taken(tmp_path, monkeypatch):
    monkeypatch.setitem(C.RECIPES, "evil", dict(dataset="wds", data=f"pipe:touch {tmp_path}/PWNED; cat a.tar"))
    with pytest.raises(resnets.ResnetsError, match="recipe evil's data runs a command"):
        C.resolve("evil")
    assert not (tmp_path / "PWNED").exists()
    assert C.resolve("evil", overrides={"data": str(tmp_path / "shards")}).data == str(tmp_path / "shards")
    # local paths, relative run folders, file:// and registered or Hub weight names are what files are for
    path = _config_file(
        tmp_path / "ok.toml",
        {"dataset": "wds", "data": "file:///data/train-000000.tar", "out": "runs/exp1", "weights": "resnet18.tv_in1k"},
    )
    cfg = C.resolve(None, path)
    assert (cfg.data, cfg.out, cfg.weights) == ("file:///data/train-000000.tar", "runs/exp1", "resnet18.tv_in1k")
    assert [C.reaches(k, v) for k, v in (("out", "/tmp/x"), ("out", "a/../../b"), ("data", "/abs/dir"))] == [
        "writes outside the working folder",
        "writes outside the working folder",
        None,
    ]
