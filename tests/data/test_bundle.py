"""From a training config to the datasets the engine trains on (data/bundle.py): splits, class selection, subsets,
sizes and statistics."""

import pytest

from resnets import data as D
from resnets.errors import ResnetsError


def test_stratified_split_holds_out_each_class():
    targets = [0] * 50 + [1] * 30
    keep, held = D.stratified_split(targets, 0.2, seed=1)
    assert len(held) == 16 and sorted(keep + held) == list(range(80))
    assert sum(targets[i] for i in held) == 6  # 20% of class 1
    assert D.stratified_split(targets, 0.2, seed=1) == (keep, held)


def test_per_class_subset_keeps_at_most_n_of_every_class():
    targets = [0] * 10 + [1] * 3 + [2] * 7
    picked = D.per_class_subset(targets, 4, seed=0)
    counts = [sum(targets[i] == c for i in picked) for c in range(3)]
    assert counts == [4, 3, 4] and picked == sorted(picked) and D.per_class_subset(targets, 4, seed=0) == picked
    assert D.per_class_subset(targets, 4, seed=1) != picked


def _folder(root, counts: dict[str, int], size=(40, 30)):
    from PIL import Image

    for cls, n in counts.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", size, (i * 20 % 256, 90, 30)).save(root / cls / f"{i}.png")
    return root


def test_build_holds_out_a_stratified_tenth_and_selects_classes(tmp_path):
    from resnets.config import TrainConfig

    root = _folder(tmp_path / "imgs", {"cat": 20, "dog": 10, "eel": 10})
    b = D.build(TrainConfig(dataset="imagefolder", data=str(root), seed=0))
    assert b.classes == ["cat", "dog", "eel"] and len(b.train) + len(b.val) == 40 and len(b.val) == 4
    assert sorted(b.val.targets) == [0, 0, 1, 2]  # a tenth of every class
    assert (b.in_chans, b.train_crop, b.eval_crop, b.eval_resize) == (3, 224, 224, 256)  # ImageNet's sizes
    two = D.build(TrainConfig(dataset="imagefolder", data=str(root), classes=["eel", "cat"], seed=0))
    assert two.classes == ["eel", "cat"] and sorted(set(two.train.targets)) == [0, 1]
    assert sum(t == 0 for t in two.train.targets) + sum(t == 0 for t in two.val.targets) == 10  # the eels
    with pytest.raises(ResnetsError, match="class 'fox' is not in the data"):
        D.build(TrainConfig(dataset="imagefolder", data=str(root), classes=["fox", "cat"]))
    with pytest.raises(ResnetsError, match="names a class twice"):
        D.build(TrainConfig(dataset="imagefolder", data=str(root), classes=["cat", "0"]))


def test_build_refuses_what_it_cannot_split_in_one_line(tmp_path):
    from resnets.config import TrainConfig

    one = _folder(tmp_path / "one", {"cat": 5})
    with pytest.raises(ResnetsError, match="has 1 class \\(cat\\); at least 2 are needed"):
        D.build(TrainConfig(dataset="imagefolder", data=str(one)))
    lonely = _folder(tmp_path / "lonely", {"cat": 5, "dog": 1})
    with pytest.raises(ResnetsError, match="class 'dog' has 1 image"):
        D.build(TrainConfig(dataset="imagefolder", data=str(lonely)))


def test_build_takes_sizes_and_statistics_of_the_pretrained_weights(tmp_path):
    """Fine-tuning image files: the weights' preprocessing gives the crop, resize and normalisation; files read as
    one channel get the statistics made one-channel (averaged)."""
    from resnets import Preprocessing
    from resnets.config import TrainConfig

    root = _folder(tmp_path / "imgs", {"cat": 6, "dog": 6})
    pre = Preprocessing(288, 256, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))
    b = D.build(TrainConfig(dataset="imagefolder", data=str(root)), preprocessing=pre)
    assert (b.train_crop, b.eval_crop, b.eval_resize) == (256, 256, 288) and b.mean == (0.5, 0.4, 0.3)
    grey = D.build(TrainConfig(dataset="imagefolder", data=str(root), in_chans=1), preprocessing=pre)
    assert grey.in_chans == 1 and grey.mean == pytest.approx((0.4,)) and grey.train[0][0].shape[0] == 1
