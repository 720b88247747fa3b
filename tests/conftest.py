import pytest
import torch
from torch import nn

# tests that need a GPU: skipped without one; `pytest -m cuda` runs only them (the whole suite is slow there)
cuda = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")]


def needs_cuda(fn):
    for mark in cuda:
        fn = mark(fn)
    return fn


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN non-trivial statistics and affine parameters, so a parity test would notice a BN that is
    misplaced or misnamed (fresh BNs are identities in eval mode)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
            elif isinstance(m, nn.GroupNorm):  # no statistics: the affine parameters
                n = m.num_channels
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
    return model


@pytest.fixture(autouse=True, scope="session")
def _private_home(tmp_path_factory):
    """Caches the tests write (ONNX exports, weights) go to a temporary home, never the user's."""
    import os

    old = os.environ.get("RESNETS_HOME")
    os.environ["RESNETS_HOME"] = str(tmp_path_factory.mktemp("resnets-home"))
    yield
    if old is None:
        os.environ.pop("RESNETS_HOME", None)
    else:
        os.environ["RESNETS_HOME"] = old


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty weights cache and torch.hub dir, so no test sees or writes a user's files."""
    monkeypatch.setenv("RESNETS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "home" / "weights"


def run_cli(*args) -> tuple[int, str, str]:
    """`resnets ARGS` run in this process: (exit code, stdout, stderr). A subprocess would pay ~6 s of imports
    (torch, torchvision) per call; tests that need a process of their own (signals, torchrun, environment
    variables, the console script) start one themselves."""
    import contextlib
    import io

    from resnets.cli import main

    import os
    from unittest import mock

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), mock.patch.dict(os.environ):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse's usage errors
            code = e.code if isinstance(e.code, int) else 0 if e.code is None else 2
    return code, out.getvalue(), err.getvalue()
