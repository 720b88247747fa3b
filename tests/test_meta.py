"""resnets.meta: a model's record (architecture, options, classes, preprocessing, what training noted) goes into a
model file as safetensors' string metadata and comes back equal; a damaged record is one WeightsError naming the
file; a model without a recorded preprocessing is fed its architecture's default input."""

import json

import pytest
import torch
from safetensors import safe_open

import resnets
from resnets.errors import ResnetsError, WeightsError
from resnets.meta import FORMAT, ModelMeta, meta_of, preprocessing_for
from resnets.models.registry import get_entry
from resnets.weights import Preprocessing

FULL = ModelMeta(
    architecture="resnet20",
    options={"in_chans": 1, "num_classes": 3},
    class_names=["dark", "mid", "light"],
    preprocessing=Preprocessing(36, 32, "bilinear", (0.5,), (0.25,)),
    source=None,
    extra={"val_top1": 91.5, "dataset": "fashion-mnist"},
)


def test_the_record_is_strings_and_reads_back_equal():
    rec = FULL.to_record()
    assert rec["format"] == FORMAT and all(isinstance(v, str) for v in rec.values())  # what safetensors stores
    back = ModelMeta.from_record(rec, "m.safetensors")
    assert back == FULL.replace(source="m.safetensors")  # source: where it was read from
    assert back.in_chans == 1 and back.names(3) == ["dark", "mid", "light"]
    bare = ModelMeta.from_record(ModelMeta("resnet50").to_record(), "b")
    assert bare.class_names is None and bare.preprocessing is None and bare.names(2) == ["0", "1"]


def test_a_saved_model_files_metadata_is_its_record(tmp_path):
    """Read with safetensors' own reader, not ours: the file carries exactly the model's record."""
    model = resnets.create_model("resnet20", in_chans=1, num_classes=3)
    path = tmp_path / "m.safetensors"
    resnets.save(model, path, class_names=FULL.class_names, preprocessing=FULL.preprocessing.to_dict())
    with safe_open(str(path), "pt") as f:
        raw = f.metadata()
    assert raw["architecture"] == "resnet20" and json.loads(raw["class_names"]) == FULL.class_names
    assert Preprocessing.from_dict(json.loads(raw["preprocessing"])) == FULL.preprocessing
    loaded = resnets.load(path)
    assert loaded.meta == ModelMeta.from_record(raw, loaded.meta.source)
    assert meta_of(loaded).options["in_chans"] == 1


@pytest.mark.parametrize("raw", [None, {}, {"format": "something/2", "architecture": "resnet50"}])
def test_files_that_are_not_resnets_model_files_have_no_record(raw):
    assert ModelMeta.from_record(raw, "x") is None


@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("options", "{not json", "options metadata is not valid JSON"),
        ("options", "[1, 2]", "options metadata should be a dict, not list"),
        ("class_names", '{"a": 1}', "class_names metadata should be a list"),
        ("class_names", "[1, 2, 3]", "class names metadata holds something other than names"),
        ("architecture", "", "names no architecture"),
        ("preprocessing", '{"resize": -1, "crop": 32}', "preprocessing metadata is damaged"),
        ("extra", '"text"', "extra metadata should be a dict"),
    ],
)
def test_a_damaged_field_is_one_error_naming_the_file(field, value, needle):
    rec = dict(FULL.to_record(), **{field: value})
    with pytest.raises(WeightsError, match=needle) as e:
        ModelMeta.from_record(rec, "damaged.safetensors")
    assert str(e.value).startswith("damaged.safetensors: ")
    if field != "options" or value.startswith("["):  # a checkpoint's plain record (no JSON) gets the same checks
        plain = {k: json.loads(v) for k, v in rec.items() if k not in ("format", "architecture")}
        with pytest.raises(WeightsError, match=needle):
            ModelMeta.from_plain(dict(plain, architecture=rec["architecture"]), "checkpoint.pt")


@pytest.mark.parametrize("name", ["resnet20", "resnet50", "resnetv2_50x1_bit"])
def test_without_a_recorded_preprocessing_the_architectures_input_size_is_used(name, caplog):
    model = resnets.create_model(name, pretrained=False)
    model.meta = model.meta.replace(preprocessing=None)
    with caplog.at_level("WARNING", logger="resnets"):
        pre = preprocessing_for(model)
    assert pre.crop == get_entry(name).input_size and "records no preprocessing" in caplog.text
    recorded = Preprocessing(40, 32)
    model.meta = model.meta.replace(preprocessing=recorded)
    assert model.meta.eval_preprocessing() == (recorded, True)


def test_a_plain_torch_module_has_no_record():
    with pytest.raises(ResnetsError, match="was not built by resnets.create_model"):
        meta_of(torch.nn.Linear(2, 2))
