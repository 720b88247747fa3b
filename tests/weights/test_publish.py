"""Publishing (weights/publish.py): a folder timm and the Hub take, with a model card, and `resnets push` of it,
refused in one line before the network and bounded in time on it."""

import pytest
import torch
from conftest import run_cli

import resnets

timm = pytest.importorskip("timm")

SHA = "fedcba9876543210fedcba9876543210fedcba98"  # the commit a fake Hub answers with


def test_export_hub_writes_a_folder_timm_loads_with_a_model_card(tmp_path):
    from PIL import Image

    data = tmp_path / "data"
    for c in ("ant", "bee"):
        for split in ("train", "val"):
            (data / split / c).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (40, 40), (60 * i, 200 if c == "ant" else 20, 90)).save(data / split / c / f"{i}.png")
    code, _, err = run_cli(
        "train",
        "--model",
        "resnet18",
        "--dataset",
        "imagefolder",
        "--data",
        data,
        "--epochs",
        1,
        "--batch-size",
        4,
        "--train-crop",
        32,
        "--eval-resize",
        36,
        "--eval-crop",
        32,
        "--workers",
        0,
        "--no-progress",
        "--device",
        "cpu",
        "--out",
        tmp_path / "runs",
        "--name",
        "r",
    )
    assert code == 0, err
    code, out, err = run_cli(
        "export", "--weights", tmp_path / "runs" / "r", "--format", "hub", "--out", tmp_path / "hubdir"
    )
    assert code == 0 and "local-dir:" in out, err
    folder = tmp_path / "hubdir"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "curves.png", "model.safetensors"]
    assert (folder / "curves.png").read_bytes() == (tmp_path / "runs" / "r" / "curves.png").read_bytes()
    card = (folder / "README.md").read_text()
    assert (
        "library_name: timm" in card and "Validation top-1: " in card and "ant, bee" in card and "imagefolder" in card
    )
    assert "](curves.png)" in card and "- epochs: 1" in card and "- batch_size: 4" in card  # the run's recipe
    ours = resnets.load(tmp_path / "runs" / "r")
    theirs = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()  # timm's own route to a folder
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(theirs(x), ours(x), atol=1e-5)
    again = resnets.load(folder)  # and back: the same metadata
    assert again.meta.class_names == ["ant", "bee"] and again.meta.preprocessing == ours.meta.preprocessing
    code, _, err = run_cli("export", "--weights", tmp_path / "runs" / "r", "--format", "hub", "--out", folder)
    assert code == 2 and "--force" in err  # nothing replaced unasked
    code, _, err = run_cli("export", "--weights", tmp_path / "runs" / "r", "--format", "hub")
    assert code == 2 and "--out DIR" in err


@pytest.fixture
def hub_folder(tmp_path):
    """A folder as `export --format hub` writes it (from a model, not a run: no curves)."""
    from resnets.weights.publish import write_folder

    model = resnets.create_model("resnet18", num_classes=3)
    return write_folder(model, tmp_path / "hubdir")


def test_push_uploads_the_folder_with_the_token(hub_folder, monkeypatch):
    """huggingface_hub's HfApi recorded (there is no network here): the repo is created, the folder uploaded."""
    import huggingface_hub

    calls = []

    class Recorder:
        def __init__(self, token=None, endpoint=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls.append(("create_repo", repo_id, private, exist_ok))

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls.append(
                (
                    "upload_folder",
                    repo_id,
                    sorted(p.name for p in __import__("pathlib").Path(folder_path).iterdir()),
                    commit_message,
                )
            )
            return huggingface_hub.CommitInfo(
                commit_url=f"https://huggingface.co/{repo_id}/commit/{SHA}",
                commit_message=commit_message,
                commit_description="",
                oid=SHA,
            )

    monkeypatch.setattr(huggingface_hub, "HfApi", Recorder)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    code, out, err = run_cli("push", hub_folder, "--repo", "me/my-resnet", "--private")
    assert code == 0, err
    assert calls == [
        ("token", "hf_test_token"),
        ("create_repo", "me/my-resnet", True, True),
        (
            "upload_folder",
            "me/my-resnet",
            ["README.md", "config.json", "model.safetensors"],
            "resnet18 written by resnets",
        ),
    ]
    assert f"commit/{SHA}" in out


def test_push_refuses_in_one_line_before_the_network(hub_folder, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no stored token
    monkeypatch.delenv("HF_TOKEN", raising=False)
    (tmp_path / "plain").mkdir()
    cases = [
        ((tmp_path / "plain", "me/x"), "not a Hub folder"),
        ((hub_folder, "not-a-repo"), "hf-hub:ORG/NAME"),
        ((hub_folder, "me/x"), "needs a Hugging Face token"),
    ]
    for (folder, repo), words in cases:
        code, _, err = run_cli("push", folder, "--repo", repo)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli("push", hub_folder, "--repo", "me/x")
    assert code == 2 and "the Hub is off" in err


def test_push_to_an_unreachable_hub_is_one_line(hub_folder, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "ENDPOINT", f"http://127.0.0.1:{port}")
    code, _, err = run_cli("push", hub_folder, "--repo", "me/x")
    assert (
        code == 2 and "cannot reach the Hugging Face Hub to push to me/x" in err and len(err.strip().splitlines()) == 1
    ), err


def test_push_to_a_hub_that_never_answers_gives_up_and_says_where(hub_folder, monkeypatch):
    """An endpoint that accepts the connection and never answers: the push ends after its timeout, naming the
    step, instead of hanging (huggingface_hub's own client waits forever)."""
    import socket
    import threading
    import time

    from resnets.weights.publish import push

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    held = []
    stop = threading.Event()

    def accept():
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(silent.accept()[0])  # accepted, never answered
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
    start = time.time()
    try:
        with pytest.raises(resnets.WeightsError, match="did not answer within 1.5 s while creating the repo"):
            push(hub_folder, "me/x", timeout_s=1.5)
    finally:
        stop.set()
        t.join()
        for c in held:
            c.close()
        silent.close()
    assert time.time() - start < 20
