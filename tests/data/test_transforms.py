"""resnets.data.transforms: per-image transforms as torchvision's, their randomness a function of (seed, epoch, index),
MixUp/CutMix targets."""

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from resnets import data as D
from resnets.data.loader import Augmented
from resnets.data.transforms import batch_mix, eval_transform, ten_crop_transform, train_transform


def test_augmentation_is_a_function_of_seed_epoch_and_index():
    ds = D.synthetic(16, 3, 32)
    tf = train_transform("paper-cifar", crop=32, mean=(0.5, 0.5, 0.5), random_erasing=0.5)
    a, b = Augmented(ds, tf, 0), Augmented(ds, tf, 0)
    assert torch.equal(a[5][0], b[5][0])
    assert not all(torch.equal(a[i][0], a[16 + i][0]) for i in range(16))  # another epoch, other crops


def test_transform_shapes():
    img = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    assert train_transform("paper-imagenet", crop=224, mean=(0.5,) * 3)(img).shape == (3, 224, 224)
    assert train_transform("rrc", crop=176, mean=(0.5,) * 3, auto_augment="trivial")(img).shape == (3, 176, 176)
    assert eval_transform(resize=232, crop=224)(img).shape == (3, 224, 224)
    assert ten_crop_transform(resize=256, crop=224)(img).shape == (10, 3, 224, 224)


def test_mixup_and_cutmix_give_soft_targets():
    mix = batch_mix(10, mixup=0.2, cutmix=1.0)
    x, y = torch.rand(8, 3, 32, 32), torch.arange(8)
    _, t = mix(x, y)
    assert t.shape == (8, 10) and torch.allclose(t.sum(1), torch.ones(8))
    assert batch_mix(10, 0, 0) is None


def test_eval_resize_applies_when_resize_equals_crop():
    # timm's crop_pct 1.0 configs give resize == crop: a photo is resized, not cropped raw
    from skimage import data as skdata

    img = torch.from_numpy(skdata.chelsea()).permute(2, 0, 1)  # 300 x 451
    out = eval_transform(resize=224, crop=224)(img)
    ref = v2.CenterCrop(224)(v2.Resize(224, antialias=True)(img))
    assert torch.equal(out, ref) and not torch.equal(out, v2.CenterCrop(224)(img))
    small = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)
    assert torch.equal(eval_transform(resize=28, crop=28)(small), small)


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee", "rocket"])
def test_nearest_resize_is_pillows(name):
    # "nearest" means Pillow's (Keras' load_img, timm): torchvision's NEAREST samples other pixels
    from PIL import Image
    from skimage import data as skdata

    from resnets.data.transforms import NearestResize

    a = getattr(skdata, name)()
    img = torch.from_numpy(a).permute(2, 0, 1)
    for size in [(224, 224), (299, 256), (180, 224)]:
        ref = np.asarray(Image.fromarray(a).resize(size[::-1], Image.NEAREST))
        assert np.array_equal(NearestResize(size)(img).permute(1, 2, 0).numpy(), ref)
    squashed = eval_transform(resize=256, crop=224, interpolation="nearest", crop_mode="squash")(img)
    ref = np.asarray(Image.fromarray(a).resize((256, 256), Image.NEAREST))[16:240, 16:240]
    assert np.array_equal(squashed.permute(1, 2, 0).numpy(), ref)
