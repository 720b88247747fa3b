"""resnets.cli.catalog: `resnets list` and `resnets summary`, answering without torch where they can, and unknown names
with suggestions."""

import json
import subprocess
import sys

from conftest import one_line_error, run_cli

import resnets


def test_list_models_and_weights():
    code, out, _ = run_cli("list")
    assert code == 0 and "resnet50 " in out and "resnet1202" in out and "plain56" in out
    code, out, _ = run_cli("list", "resnext*", "--json")
    assert [m["name"] for m in json.loads(out)] == ["resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d"]
    code, out, _ = run_cli("list", "--weights")
    assert code == 0 and "resnet50.tv2_in1k" in out and "80.858" in out
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}  # dense weights: the scores their task publishes
    assert "box mAP 37.9, mask mAP 34.6" in rows["maskrcnn_resnet50_fpn.tv_coco"]
    assert "mIoU 66.4, pixel acc 92.4" in rows["deeplabv3_resnet50.tv_coco_voc"]


def test_summary_text_and_json():
    code, out, _ = run_cli("summary", "resnet50")
    assert code == 0 and "25,557,032" in out and "conv5_x" in out and "7x7" in out
    code, out, _ = run_cli("summary", "resnet50", "--stride-in-1x1", "--json")
    s = json.loads(out)
    assert s["params"] == 25_557_032 and s["macs"] == 3_857_973_248 and len(s["stages"]) == 6
    code, out, _ = run_cli("summary", "resnet20", "--in-chans", "1", "--input-size", "28", "--json")
    s = json.loads(out)
    assert s["input"] == [1, 28, 28] and s["stages"][-2]["output"] == [64, 7, 7]


def test_summary_of_a_saved_model_file(tmp_path):
    resnets.save(resnets.create_model("resnet32", num_classes=4), tmp_path / "m.safetensors")
    code, out, _ = run_cli("summary", tmp_path / "m.safetensors", "--json")
    assert code == 0 and json.loads(out)["model"] == "resnet32" and "4-d fc" in out


def test_unknown_model_suggests_close_names():
    code, _, err = run_cli("summary", "resnet5")
    one_line_error(code, err, "unknown model 'resnet5'", "resnet50")


def test_help_version_and_list_answer_without_loading_torch():
    """`resnets list` took 12-16 s to print a static table: it now answers as --help does. (`list --weights`
    reads torchvision's weight records, which are torchvision's to keep: that one costs torchvision's import.)"""
    code = (
        "import sys; from resnets.cli import main\n"
        "for argv in (['--version'], ['--help'], ['train', '--help'], ['predict', '--help'], ['list'],\n"
        "             ['list', 'resnet5*', '--json']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "print('torch' in sys.modules)"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip().splitlines()[-1] == "False", p.stderr
