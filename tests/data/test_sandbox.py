"""The pool of decoder processes: caps enforced from outside the decoder (time) and by the OS (memory), a failed
worker replaced without touching any other image, no torch in a worker, decoding in parallel."""

import io
import os
import threading
import time

import numpy as np
import pytest
from PIL import Image

from resnets.data import sandbox
from resnets.data.datasets import BadSample, decode_bytes


def _png(w, h, noise=False) -> bytes:
    a = np.random.default_rng(0).integers(0, 256, (h, w), dtype=np.uint8) if noise else np.zeros((h, w), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


SMALL = _png(40, 30)


def test_a_worker_imports_no_torch_and_cannot_write_files():
    pool = sandbox.Pool(1)
    try:
        reply, _ = pool.decode({"channels": 1, "max_pixels": 10**6, "max_bytes": 3 * 10**6}, SMALL)
        assert reply["ok"] and reply["shape"] == [30, 40, 1]
        (worker,) = pool.idle
        maps = open(f"/proc/{worker.proc.pid}/maps").read()
        assert "libtorch" not in maps and "_imaging" in maps  # Pillow's decoders, and not torch
        limits = open(f"/proc/{worker.proc.pid}/limits").read()
        assert [line.split()[3:5] for line in limits.splitlines() if line.startswith("Max file size")] == [["0", "0"]]
    finally:
        pool.close()


def test_a_decoder_over_the_time_cap_is_killed_and_replaced(monkeypatch):
    big = _png(6000, 6000, noise=True)  # about a second to decode on one core
    monkeypatch.setenv("RESNETS_DECODE_TIMEOUT", "0.1")
    t = time.monotonic()
    with pytest.raises(BadSample) as e:
        decode_bytes(big, "slow.png", 1)
    assert e.value.kind == "too_slow" and "time cap of 0.1 s" in e.value.reason
    assert time.monotonic() - t < 5
    monkeypatch.delenv("RESNETS_DECODE_TIMEOUT")
    assert decode_bytes(SMALL, "next.png", 1).shape == (1, 30, 40)  # the next image, in a fresh worker


def test_a_worker_that_dies_fails_only_its_own_image():
    pool = sandbox.Pool(1)
    req = {"channels": 1, "max_pixels": 10**8, "max_bytes": 3 * 10**8}
    try:
        pool.decode(req, SMALL)
        (worker,) = pool.idle
        threading.Timer(0.05, lambda: os.kill(worker.proc.pid, 9)).start()
        with pytest.raises(sandbox.Failed) as e:
            pool.decode(req, _png(6000, 6000, noise=True))
        assert "SIGKILL" in e.value.reason
        reply, pixels = pool.decode(req, SMALL)
        assert reply["ok"] and len(pixels) == 30 * 40
        assert pool.running == 1
    finally:
        pool.close()


def test_threads_decode_in_parallel_on_as_many_workers():
    pool = sandbox.Pool(2)
    req = {"channels": 1, "max_pixels": 10**8, "max_bytes": 3 * 10**8}
    data = _png(2000, 2000, noise=True)
    used = set()

    def one():
        pool.decode(req, data)

    try:
        threads = [threading.Thread(target=one) for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        used = {w.proc.pid for w in pool.idle}
        assert len(used) == 2 and pool.running == 2
    finally:
        pool.close()


def test_a_forked_child_gets_a_pool_of_its_own():
    parent = sandbox.pool()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child decodes through its own workers, never the parent's pipes
        try:
            ok = sandbox.pool() is not parent and decode_bytes(SMALL, "child.png", 1).shape == (1, 30, 40)
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(w)
    got = os.read(r, 1)
    os.waitpid(pid, 0)
    assert got == b"1"


def _tiff_of_strips(strips: int) -> bytes:
    """A 64x`strips` grey TIFF whose header lists one strip per row: `strips` offsets and byte counts, which
    Pillow reads into Python tuples before any pixel (a header that costs memory in proportion to its file)."""
    import struct

    table = np.full(strips, 8, "<u4").tobytes()
    entries = [(256, 4, 1, 64), (257, 4, 1, strips), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1)]
    entries += [(273, 4, strips, 0), (277, 3, 1, 1), (278, 4, 1, 1), (279, 4, strips, 0)]
    ifd_at = 8
    tables_at = ifd_at + 2 + 12 * len(entries) + 4
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd_at) + struct.pack("<H", len(entries)))
    for tag, kind, count, value in entries:
        if tag in (273, 279):
            value = tables_at + (0 if tag == 273 else len(table))
        out += struct.pack("<HHI", tag, kind, count)
        out += struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
    return bytes(out + struct.pack("<I", 0) + table + table)


def test_a_worker_that_hit_its_cap_is_never_handed_out_again():
    """A header that costs a gigabyte of tables (5 M strips: 40 MB of file) ends at the header's cap; the worker
    exits after answering, and the next image goes to a fresh one (a race here once failed the next good image)."""
    pool = sandbox.Pool(1)
    req = {"channels": 1, "max_pixels": 10**9, "max_bytes": 3 * 10**9}
    try:
        reply, _ = pool.decode(req, _tiff_of_strips(5_000_000))
        assert not reply["ok"] and reply["kind"] == "too_many_pixels" and "memory cap" in reply["reason"]
        assert reply["peak_mb"] < 400
        for _ in range(3):
            reply, pixels = pool.decode(req, SMALL)
            assert reply["ok"] and len(pixels) == 30 * 40
    finally:
        pool.close()


def test_large_images_of_every_kind_fit_what_the_decoder_expects_of_them():
    """What the memory estimate once missed (a hostile review): the premultiplied copy Pillow's reduce makes of an
    image with alpha, a progressive JPEG's full-size coefficients, a compressed TIFF's strip buffer."""
    ramp = np.linspace(0, 255, 6000 * 4000, dtype=np.float32).reshape(4000, 6000).astype(np.uint8)
    images = {
        "rgba.png": (Image.merge("RGBA", [Image.fromarray(ramp)] * 4), "PNG", {"compress_level": 1}),
        "la.png": (Image.merge("LA", [Image.fromarray(ramp[:, :4000])] * 2), "PNG", {"compress_level": 1}),
        "progressive.jpg": (Image.merge("RGB", [Image.fromarray(ramp)] * 3), "JPEG", {"progressive": True}),
        "deflate.tif": (Image.merge("RGB", [Image.fromarray(ramp)] * 3), "TIFF", {"compression": "tiff_adobe_deflate"}),
    }
    pool = sandbox.Pool(1)
    try:
        for name, (im, fmt, kw) in images.items():
            buf = io.BytesIO()
            im.save(buf, fmt, **kw)
            reply, _ = pool.decode(
                {"channels": 3, "max_pixels": 10**8, "max_bytes": 3 * 10**8, "short": 224}, buf.getvalue()
            )
            assert reply["ok"], (name, reply)
    finally:
        pool.close()
