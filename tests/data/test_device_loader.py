"""The device loaders on a CPU: image files read by workers, JPEGs decoded in batches on the device with
fallbacks (what nvJPEG refuses goes to the CPU decoders; what nothing decodes is skipped and counted), and the
in-memory loader; CUDA-only checks run where there is a GPU."""

import pytest
import torch
from conftest import needs_cuda as cuda
from torchvision.io import encode_jpeg, write_png

from resnets.data import datasets as D
from resnets.data.loader import make_eval_loader, make_train_loader
from resnets.errors import ResnetsError


def _photo():
    from skimage import data as sk

    return torch.from_numpy(sk.astronaut()).permute(2, 0, 1).contiguous()


@pytest.fixture
def files(tmp_path):
    """Six JPEG crops of a real photo in two classes, a PNG, a truncated JPEG and a text file named .jpg."""
    img = _photo()
    for k in range(6):
        d = tmp_path / ("a" if k % 2 else "b")
        d.mkdir(exist_ok=True)
        (d / f"p{k}.jpg").write_bytes(
            encode_jpeg(img[:, 40 * k : 40 * k + 200, 30 * k : 30 * k + 260].contiguous()).numpy().tobytes()
        )
    write_png(img[:, :120, :150].contiguous(), str(tmp_path / "a" / "p.png"))
    good = (tmp_path / "b" / "p0.jpg").read_bytes()
    (tmp_path / "b" / "broken.jpg").write_bytes(good[: len(good) // 3])
    (tmp_path / "b" / "text.jpg").write_bytes(b"not an image at all")
    return D.image_folder(tmp_path)


def _eval(ds, kind, **kw):
    return list(make_eval_loader(ds, kind=kind, device=torch.device("cpu"), batch_size=16, resize=72, crop=64, **kw))


def test_file_loader_decodes_jpegs_in_batches_and_counts_what_it_cannot_read(files):
    (batch,) = _eval(files, "device", workers=1)
    (host,) = _eval(files, "host", workers=0)
    assert batch.images.shape == (7, 3, 64, 64) and batch.images.dtype == torch.uint8
    assert sorted(p.rsplit("/", 1)[-1] for p, _ in batch.bad) == ["broken.jpg", "text.jpg"]
    assert sorted(p for p, _ in batch.bad) == sorted(p for p, _ in host.bad)
    assert torch.equal(batch.labels, host.labels)
    # the same images as the per-image pipeline, to the difference of the resampling filters
    assert (batch.images.float() - host.images.float()).abs().mean() < 3


def test_jpegs_the_batch_decoder_refuses_are_decoded_on_the_cpu(files, monkeypatch):
    """nvJPEG refuses some files (CMYK, some progressive ones): the batch is decoded one by one, and a file the
    device decoder still refuses goes to the CPU decoders. Simulated here by a decoder that refuses two files."""
    from torchvision import io

    from resnets.data import device_loader

    real = io.decode_jpeg
    jpegs = sorted(p for p, _ in files.samples if p.rsplit("/", 1)[-1].startswith("p") and p.endswith(".jpg"))
    refused = {open(p, "rb").read() for p in jpegs[:2]}
    calls = []

    def picky(data, **kw):
        calls.append(type(data).__name__)
        if isinstance(data, list):
            raise RuntimeError("nvjpeg: unsupported image in batch")
        if data.numpy().tobytes() in refused:
            raise RuntimeError("nvjpeg: unsupported JPEG")
        return real(data, **kw)

    monkeypatch.setattr(device_loader, "jpegs_on_device", lambda device: True)  # as on a GPU
    monkeypatch.setattr(io, "decode_jpeg", picky)
    (batch,) = _eval(files, "device", workers=0)
    monkeypatch.setattr(io, "decode_jpeg", real)
    (reference,) = _eval(files, "device", workers=0)
    assert calls[0] == "list" and calls.count("Tensor") == 7  # one batch try, then each JPEG alone (the truncated too)
    assert len(batch.bad) == 2 and torch.equal(batch.images, reference.images)


def test_strict_data_stops_at_the_first_unreadable_file(files):
    with pytest.raises(ResnetsError, match="strict data is on"):
        _eval(files, "device", strict=True)


def test_train_batches_from_files_are_augmented_on_the_device_deterministically(files):
    def epoch_batches(epoch, start=0):
        loader = make_train_loader(
            files,
            kind="device",
            device=torch.device("cpu"),
            batch_size=4,
            seed=1,
            augment="rrc",
            crop=48,
            mean=(0.5, 0.5, 0.5),
            workers=0,
        )
        loader.set_epoch(epoch, start)
        return list(loader)

    a, b = epoch_batches(0), epoch_batches(0)
    assert len(a) == 2 and all(torch.equal(x.images, y.images) for x, y in zip(a, b))
    assert torch.equal(epoch_batches(0, start=1)[0].images, a[1].images)  # resume mid-epoch: the same batch
    assert not torch.equal(epoch_batches(1)[0].images, a[0].images)
    assert all(x.images.shape[1:] == (3, 48, 48) for x in a)


def test_in_memory_loader_falls_back_to_the_host_when_the_data_does_not_fit(monkeypatch, caplog):
    from resnets.data import loader as L

    ds = D.synthetic(64, 4, 32)
    monkeypatch.setattr(
        L, "_fits_on", lambda device, n: (False, "9.0 GiB of images do not fit in half of the GPU's 4.0 GiB free")
    )
    got = make_train_loader(
        ds,
        kind="auto",
        device=torch.device("cpu"),
        batch_size=16,
        seed=0,
        augment="crop-flip",
        crop=32,
        mean=(0.5,) * 3,
    )
    assert got.kind == "host" and "do not fit" in caplog.text and "host loader" in caplog.text


@cuda
def test_nvjpeg_decodes_like_the_cpu(files):
    (on_gpu,) = list(
        make_eval_loader(files, kind="device", device=torch.device("cuda"), batch_size=16, resize=72, crop=64)
    )
    (on_cpu,) = _eval(files, "device")
    assert on_gpu.images.is_cuda and len(on_gpu.bad) == 2
    assert (on_gpu.images.cpu().float() - on_cpu.images.float()).abs().mean() < 2  # IDCT rounding differs
