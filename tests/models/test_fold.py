"""resnets.models.fold: batch norm folded into the convolution before it, for inference. The folded copy computes
the model's function (checked against the model itself, with norms whose statistics are not the identity), runs no
batch norm, keeps the model's layout, leaves the model as it was, and is not made where it would be wrong."""

import pytest
import torch
from conftest import count_batch_norms, randomize_norms
from torch import nn

import resnets
from resnets.evaluate import evaluate
from resnets.models.fold import folded


def _with_statistics(name: str, **kw) -> nn.Module:
    """A model whose norms hold statistics and affine weights away from their initial identity, in eval mode."""
    torch.manual_seed(0)
    return randomize_norms(resnets.create_model(name, num_classes=7, **kw)).eval()


# one of each kind of block: basic, bottleneck, grouped, ResNet-D's pooled shortcut, pre-activation (V2), the
# paper's CIFAR net with its parameter-free shortcut (option A) and a plain net
@pytest.mark.parametrize(
    "name,size", [("resnet18", 64), ("resnet50", 64), ("resnext50_32x4d", 64), ("resnet50d", 64),
                  ("resnetv2_50", 64), ("resnet20", 32), ("plain20", 32)],
)  # fmt: skip
def test_the_folded_copy_computes_the_same_without_batch_norm(name, size, monkeypatch):
    model = _with_statistics(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        want = model(x)
        fast = folded(model)
        calls = count_batch_norms(monkeypatch)
        got = fast(x)
    assert fast is not model
    scale = want.abs().max()
    assert (got - want).abs().max() <= 1e-5 * scale, (got - want).abs().max() / scale
    norms_left = sum(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    if name.startswith("resnetv2"):  # pre-activation: a norm that reads a block's input, not a conv's, stays
        assert 0 < norms_left < sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) / 2
        assert len(calls) == norms_left
    else:
        assert norms_left == 0 and calls == []
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the model as it was
    assert all(not m.training for m in model.modules())


def test_the_folded_copy_keeps_channels_last():
    model = _with_statistics("resnet18").to(memory_format=torch.channels_last)
    convs = [m for m in folded(model).modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert not convs[0].weight.is_contiguous()


class _Branchy(nn.Module):
    """A forward torch.fx cannot trace: which branch runs depends on the data."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.bn(self.conv(x))
        return y if y.sum() > 0 else -y


def test_the_model_itself_where_folding_would_be_wrong_or_cannot_be_done():
    model = _with_statistics("resnet18")
    assert folded(model.train()) is model  # training: the norms use the batch's statistics
    model.eval()
    handle = model.layer1.register_forward_hook(lambda m, i, o: None)
    assert folded(model) is model  # a hook (Grad-CAM's, a feature tap) would not come along
    handle.remove()
    assert folded(model) is not model
    bit = resnets.create_model("resnetv2_50x1_bit", num_classes=7).eval()
    assert folded(bit) is bit  # group norm and weight standardisation: no batch norm to fold
    branchy = _Branchy().eval()
    assert folded(branchy) is branchy  # untraceable: run as it is


def test_evaluation_runs_the_folded_model_and_scores_the_same(monkeypatch):
    from resnets.distributed import Context

    model = _with_statistics("resnet20", in_chans=1).train()
    images = torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8)
    batches = [
        type("B", (), {"images": images[i : i + 20], "labels": torch.arange(i, i + 20) % 7, "bad": []})()
        for i in (0, 20)
    ]
    with torch.no_grad():
        want = model.eval()(images.float() / 255).argmax(1)
    model.train()
    calls = count_batch_norms(monkeypatch)
    ev = evaluate(model, batches, lambda t: t.float() / 255, 7, Context(device=torch.device("cpu")))
    assert calls == []  # no batch norm ran
    assert model.training  # given back in the mode it came in
    assert ev["top1"] == pytest.approx(100 * (want == torch.arange(40) % 7).float().mean().item())
