"""resnets.data.sources: datasets read from their official files (CIFAR archives) and downloads checked, leaving nothing
behind when a check fails."""

import pytest
import torch
from conftest import cifar_archive

from resnets import data as D
from resnets.errors import ResnetsError


def test_cifar10_from_an_archive_in_the_official_format(tmp_path):
    arch = tmp_path / "cifar-10-python.tar.gz"
    cifar_archive(arch)
    x, y, classes = D.sources.load_cifar("cifar10", "train", arch)
    assert x.shape == (100, 3, 32, 32) and x.dtype == torch.uint8 and len(y) == 100 and classes[3] == "c3"
    xt, yt, _ = D.sources.load_cifar("cifar10", "test", tmp_path)  # a folder holding the archive works too
    assert xt.shape == (20, 3, 32, 32) and yt[:10].tolist() == list(range(10))
    with pytest.raises(ResnetsError, match="not found"):
        D.sources.load_cifar("cifar100", "train", tmp_path / "none.tar.gz")


def test_downloads_are_checked_and_leave_nothing_behind(tmp_path, monkeypatch):
    """The dataset download (torchvision's downloader, behind our temporary folder) from a real HTTP server on this
    machine: a good file lands; one failing its md5 and an unreachable one are one clear error, nothing left."""
    import functools
    import hashlib
    import http.server
    import threading

    from resnets.data.sources import fetch_file
    from resnets.errors import ResnetsError

    served = tmp_path / "served"
    served.mkdir()
    payload = bytes(range(256)) * 40
    (served / "train-images-idx3-ubyte.gz").write_bytes(payload)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/train-images-idx3-ubyte.gz"
    dest = tmp_path / "data" / "fashion-mnist" / "train-images-idx3-ubyte.gz"
    try:
        fetch_file(url, dest, hashlib.md5(payload).hexdigest())
        assert dest.read_bytes() == payload
        other = dest.with_name("other.gz")
        with pytest.raises(ResnetsError, match="failed its checksum"):
            fetch_file(url, other, "0" * 32)
        with pytest.raises(ResnetsError, match="cannot download"):
            fetch_file(url.replace("train-images", "missing"), other, "0" * 32)
        assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]  # no temporary, no bad file
        # the command's path (`resnets data fashion-mnist --download`), its four files from this server
        from resnets.data import sources

        files = {f"{n}.gz": payload[: 100 * (i + 1)] for i, n in enumerate(("a", "b", "c", "d"))}
        for name, data in files.items():
            (served / name).write_bytes(data)
        monkeypatch.setattr(sources, "find_fashion_mnist", lambda root=None: None)  # not the machine's copy
        monkeypatch.setattr(sources, "FASHION_URL", url.rsplit("/", 1)[0] + "/")
        monkeypatch.setattr(sources, "FASHION_FILES", {n: hashlib.md5(d).hexdigest() for n, d in files.items()})
        monkeypatch.setenv("RESNETS_DATA", str(tmp_path / "home"))
        got = sources.fetch_fashion_mnist(download=True)
        assert {p.name: p.read_bytes() for p in got.iterdir()} == files
    finally:
        server.shutdown()
