"""What every command shares: the parser (one-line usage errors, suggestions for misspelt options), bounded number
types, the model and config flags (help from the config, defaults of the recipe in force), and the defaults said
in every option's help."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
import re
import typing
from pathlib import Path

from .. import config
from ..backends import BACKENDS
from ..config import MODEL_OPTIONS, RECIPES, RULES, TrainConfig
from ..errors import ResnetsError
from ..meta import traits_of
from ..models import get_entry, list_models
from ..models.registry import TASK_TRAITS
from ..safe_io import MODEL_NAME

# what loads torch is imported inside the commands that use it: `resnets --help` answers without torch

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (like every other bad input) and exit code 2, a misspelt option
    answered with the closest options of the command it was given to (also where the error argparse gives first is
    a required option missing: `--weigths m`), and no abbreviations (`--epoch 1` is not taken for `--epochs`)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        command = self._subcommand() or self
        known = [o for a in command._actions for o in a.option_strings if o.startswith("--")]
        for word in getattr(self, "argv_given", None) or message.split():
            name = word.split("=")[0]
            if name.startswith("--") and name not in known:
                close = difflib.get_close_matches(name, known, n=2, cutoff=0.6)
                if close:
                    message += f"; did you mean {' or '.join(close)} (not {name})?"
                    break
        self.exit(EXIT_USAGE, f"resnets: error: {message} (see `{command.prog} --help`)\n")

    def _subcommand(self) -> "argparse.ArgumentParser | None":
        """The parser of the command named on the command line being parsed (set by `main`), if any."""
        subs = [a for a in self._actions if isinstance(a, argparse._SubParsersAction)]
        name = getattr(self, "command_given", None)
        return subs[0].choices.get(name) if subs and name else None


def count(low: int, high: int = 2**31 - 1):
    """An argparse type: a whole number in [low, high] (no count a command takes is near 2**31)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number; got {text[:40]!r}") from None
        if not low <= v <= high:
            raise argparse.ArgumentTypeError(f"must be from {low:,} to {high:,}; got {text[:40]}")
        return v

    parse.__name__ = f"number >= {low}"
    return parse


def real(low: float, high: float, *, low_open: bool = False):
    """An argparse type: a finite number in [low, high], or (low, high] with `low_open`."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number; got {text[:40]!r}") from None
        if not math.isfinite(v) or v > high or v < low or (low_open and v == low):
            raise argparse.ArgumentTypeError(
                f"must be {'over' if low_open else 'at least'} {low:g} and at most {high:g}; got {text[:40]}"
            )
        return v

    parse.__name__ = "number"
    return parse


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The architecture options, as the training config declares them (the same flags, help and values)."""
    g = p.add_argument_group("model options (only those the architecture takes)")
    g.add_argument(
        "--num-classes", type=count(0), metavar="N", help="classifier size (default: the model's, or the weights')"
    )
    for f in dataclasses.fields(TrainConfig):
        if f.name in MODEL_OPTIONS:
            _add_key(g, f, f.name)


def model_options(args: argparse.Namespace) -> dict:
    """The model options given on the command line, typed as the config types them."""
    given = {k: getattr(args, k) for k in ("num_classes", *config.MODEL_OPTIONS) if getattr(args, k, None) is not None}
    typed = config.apply(
        config.TrainConfig(), {k: v for k, v in given.items() if k != "num_classes"}, "the command line"
    )
    return {k: getattr(typed, k) if k != "num_classes" else v for k, v in given.items()}


def add_config_flags(p: argparse.ArgumentParser, recipe_help: str, recipe: str | None) -> None:
    """--recipe, --config, --set, --resume, and every TrainConfig field as a flag: --batch-size 64,
    --deterministic / --no-deterministic, --milestones 1,2. The defaults shown are `recipe`'s (None: the plain
    config's): those that apply to the command as typed."""
    p.add_argument("--recipe", help=recipe_help)
    p.add_argument("--config", help="a TOML or YAML file of config keys")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key (repeatable)")
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (the recipe, then --config, then the flags) as a TOML file that --config "
        "reads back, and exit without training",
    )
    p.add_argument(
        "--resume",
        metavar="RUN_DIR|auto",
        help="continue the run in RUN_DIR from its last checkpoint; auto: continue the run --out/--name if it is "
        "there, else start it (the same command for every restart: torchrun --max-restarts, a SLURM requeue)",
    )
    whose = f"recipe {recipe}'s" if recipe else "those without a recipe"
    values = RECIPES.get(recipe, {}) if recipe else {}
    for i, section in enumerate(config.SECTIONS):  # a group a section; each key's help, default, values from it
        g = p.add_argument_group(
            f"config keys: {section.SECTION}",
            f"each overrides the recipe and the config file; the defaults shown are {whose}" if i == 0 else None,
        )
        for f in dataclasses.fields(section):
            _add_key(g, f, f"cfg__{f.name}", values)


def _add_key(g, f, dest: str, recipe: dict | None = None) -> None:
    """A config key (a TrainConfig field) as a flag: its help, default and values from the config. Values stay
    text; the config types and checks them."""
    name, hint, rule = f.name, typing.get_type_hints(TrainConfig)[f.name], RULES[f.name]
    flag, neg = "--" + name.replace("_", "-"), "--no-" + name.replace("_", "-")
    recipe = recipe or {}
    default = (
        recipe[name] if name in recipe else f.default if f.default is not dataclasses.MISSING else f.default_factory()
    )
    help_ = f.metadata.get("help", "")
    shown = (
        ("auto" if "auto:" in help_ else "the architecture's" if name in MODEL_OPTIONS else "unset")
        if default is None
        else ",".join(map(str, default)) or "none"
        if isinstance(default, list)
        else ("on" if default else "off")
        if isinstance(default, bool)
        else (default if default != "" else '""')
    )
    # a help that says its default itself ("(default 512)", "unset: weight_decay", "default: <model>-...") is not
    # told another one; the recipe's value is, when it differs
    says = "default" in help_.lower() or (default is None and "unset:" in help_) or default == ""
    # the bound every count has (2**31 - 1) is no news in a help line; a value past it is still refused, by name
    said_rule = dataclasses.replace(rule, high=None) if rule.high in (config.COUNT, config.SEED) else rule
    limits = [] if rule.choices or said_rule.describe() == "any value" else [said_rule.describe()]
    notes = ([] if says and name not in recipe else [f"default: {shown}"]) + limits
    if hint is bool and default:  # the switch that turns it off is not listed on its own
        notes.append(f"{neg} turns it off")
    text = (help_ + (f" ({'; '.join(notes)})" if notes else "")).replace("%", "%%").strip()
    if hint is bool:
        g.add_argument(flag, dest=dest, action="store_const", const="true", default=None, help=text)
        g.add_argument(neg, dest=dest, action="store_const", const="false", help=argparse.SUPPRESS)
    elif hint == bool | None:  # a switch that also takes a value: --channels-last, --channels-last auto
        metavar = "auto" if name == "channels_last" else "true|false"
        g.add_argument(flag, dest=dest, nargs="?", const="true", default=None, metavar=metavar, help=text)
        g.add_argument(neg, dest=dest, action="store_const", const="false", help=argparse.SUPPRESS)
    else:
        metavar = "{" + ",".join(map(str, rule.choices)) + "}" if rule.choices else _metavar(hint)
        g.add_argument(flag, dest=dest, metavar=metavar, default=None, help=text)


def _metavar(hint) -> str:
    """How a config key's value is written on the command line, from its type."""
    text = str(hint)
    return (
        "N,N"
        if "list[int]" in text
        else "A,B"
        if "list" in text
        else "N"
        if "int" in text
        else "X"
        if "float" in text
        else "TEXT"
    )


def parse_set(items: list[str] | None) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ResnetsError(f"--set takes KEY=VALUE; got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v
    return out


def overrides_of(args: argparse.Namespace) -> dict:
    overrides = {k[5:]: v for k, v in vars(args).items() if k.startswith("cfg__") and v is not None}
    return overrides | parse_set(args.set)


def is_architecture(text: str) -> bool:
    """A registered architecture name ("resnet50"), as opposed to weights: a file, a run folder or a registered
    weight name ("resnet50.tv2_in1k")."""
    return text in list_models() and not os.path.exists(text)


def output_beside(weights: str, suffix: str) -> str:
    """Where a file a command makes from --weights goes without --out: inside a run (or model) folder
    (DIR/model<suffix>), beside a model file (its name, `suffix` for its own), and for a registered or Hub name in
    the working directory, named after it (resnet50.tv_in1k<suffix>; NAME<suffix> for hf-hub:ORG/NAME@REV)."""
    path = Path(weights)
    if path.is_dir():
        return str(path / f"model{suffix}")
    if path.is_file():
        return str(path.with_suffix("")) + suffix
    name = weights.removeprefix("hf-hub:").split("@")[0].rstrip("/").rpartition("/")[2]
    return re.sub(r"[^\w.-]", "_", name or "model") + suffix


def folder_beside(weights: str, name: str) -> str | None:
    """Where a command's folder of results (`resnets eval`'s eval/) goes without --out: into a run (or model)
    folder given, beside a model file; for a registered or Hub name nowhere (None: results that are printed too are
    not written into the working directory or a cache)."""
    path = Path(weights)
    if path.is_dir():
        return str(path / name)
    return str(path.parent / name) if path.is_file() else None


def check_classifier(name: str) -> None:
    """The commands that take a classifier refuse a detector by name in one line (their turn comes with
    `resnets detect`)."""
    task = get_entry(name).task
    if task is not TASK_TRAITS["classification"]:
        raise ResnetsError(f"{name} is a {task.noun}: this command takes classifiers (resnets list shows the families)")


def load_for_inference(weights: str, device: str, *, classifier: bool = False):
    """The model `weights` name on `device`; classifier: refuse a detector or segmenter in one line (the commands
    that take class scores: predict, embed, similar, explain, export, bench)."""
    from ..devices import pick_device
    from ..factory import load

    dev = pick_device(device)  # an unavailable device is one line, before the model is read
    model = load(weights)
    if classifier:
        refuse_dense(model, weights)
    return model.to(dev)


def refuse_dense(model, weights) -> None:
    """One line for a detector or a segmenter where a classifier is needed, naming the command that takes it."""
    require_task(model, weights, "classification")


def require_task(model, weights, task: str) -> None:
    """One line when `model` is not for `task` (a command's kind of model), naming the command that runs it."""
    have, want = traits_of(model), TASK_TRAITS[task]
    if have is not want:
        raise ResnetsError(
            f"{weights} is a {have.noun}: this command takes {want.noun}s (`resnets {have.command}` runs it)"
        )


def backend_help() -> str:
    return "; ".join(
        ["auto: the fastest for the device and precision"] + [f"{b.name}: {b.doc}" for b in BACKENDS.values()]
    )


# what the options many commands share mean, said once (an option declared without a help, or with only its
# default, gets its line from here)
SHARED_HELP = {
    "json": "print the result as JSON",
    "device": "auto | cpu | cuda | cuda:N",
    "download": "fetch the dataset from its official site when it is not found locally (hash-checked)",
    "no_progress": "no progress bar",
    "precision": "the numbers the model computes in (fp32; bf16, fp16 on a device that has them)",
    "format": "how results are printed: table, json or csv",
    "batch_size": "images a forward pass takes at once",
    "dataset": "a registered dataset (resnets data --list)",
    "weights": "a model file, a run folder or a registered weights name",
    "paths": "image files or folders",
    "query": "an image file: its nearest neighbours in the index",
    "image": "an image file",
    "index": "the index `resnets embed --out` wrote",
    "what": "what to reproduce (see the choices)",
    "name": "the dataset (see the choices)",
    "seed": "seed of every random choice",
    "input_size": "the input's side in pixels",
    "channels_last": "channels-last memory format: on or off",
}


def fill_help(p: argparse.ArgumentParser) -> None:
    """Every option and argument of `p` says what it is: one without a help of its own takes SHARED_HELP's line."""
    for a in p._actions:
        if isinstance(a, (argparse._HelpAction, argparse._VersionAction)) or a.help == argparse.SUPPRESS:
            continue
        if (not a.help or a.help.startswith("default")) and a.dest in SHARED_HELP:
            a.help = SHARED_HELP[a.dest] + (f" ({a.help})" if a.help else "")


def say_defaults(p: argparse.ArgumentParser) -> None:
    """Every option with a default that its help does not state gets "(default X)": one rule for every command
    (several options lacked it while the README promised it)."""
    for a in p._actions:
        if not a.option_strings or a.help == argparse.SUPPRESS or a.default in (None, False, argparse.SUPPRESS):
            continue
        if isinstance(a, (argparse._HelpAction, argparse._VersionAction)) or "default" in (a.help or ""):
            continue
        shown = ",".join(map(str, a.default)) if isinstance(a.default, (list, tuple)) else a.default
        a.help = f"{a.help} (default {shown})" if a.help else f"default {shown}"


def model_name(text: str) -> str:
    """--model-name: a name a URL path and a folder carry as it is (choices.MODEL_NAME)."""
    if not re.fullmatch(MODEL_NAME, text):
        raise argparse.ArgumentTypeError(f"letters, digits, '.', '_' and '-' (at most 100); got {text[:40]!r}")
    return text


def writable_folder(path: str | os.PathLike, flag: str) -> None:
    """A folder a command will write into, checked before its work: not a file, and made (or its nearest existing
    folder) writable; nothing is created here."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ResnetsError(f"{flag} {path} is a file; it names the folder to write into")
    near = next(a for a in (p, *p.parents) if a.exists())
    if not near.is_dir() or not os.access(near, os.W_OK | os.X_OK):
        raise ResnetsError(f"{flag} {path}: {near} is not a folder this user can write into")
