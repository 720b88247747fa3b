"""Shards streamed (data/remote.py, loader.ShardBatches): `pipe:` patterns train with the index read from beside the
shards, each shard fetched once into the cache, whole shards dealt to ranks (every rank the same number of batches,
no image twice in an epoch), an exact mid-epoch resume, and a stream that fails or disagrees with its index named in
one line or as bad samples. Every fetch bounded (issue 36): a server or command that lies about a shard's size, goes
quiet, or is stopped by a signal leaves the cache as it was, and says so in one line within the timeout."""

import json
import os
import shutil
import time

import pytest
import torch
from conftest import TINY_RUN, one_line_error, run_cli
from test_shards import folder, sharded  # noqa: F401  (the module's shard fixtures)

from resnets import engine
from resnets.config import resolve
from resnets.data import remote, shards
from resnets.data.datasets import BadSample
from resnets.data.loader import EvalBatches, ShardBatches, epoch_batches
from resnets.errors import ResnetsError
from resnets.factory import load
from resnets.weights.files import load_checkpoint

SIZES = [5, 7, 3, 6, 4, 8, 2]


def _groups(sizes=SIZES):
    starts = [sum(sizes[:k]) for k in range(len(sizes))]
    return [list(range(s, s + n)) for s, n in zip(starts, sizes)]


def _pattern(out, names="train-{000000..000002}"):
    return f"pipe:cat {out}/{names}.tar"


@pytest.mark.parametrize("world", [1, 2, 3])
def test_shard_batches_deal_whole_shards_and_the_same_number_of_batches(world):
    groups, n = _groups(), sum(SIZES)
    shard_of = {i: k for k, g in enumerate(groups) for i in g}
    local = 2
    samplers = [ShardBatches(groups, local * world, seed=3, rank=r, world=world, window=2) for r in range(world)]
    expected = (n - (world - 1) * max(SIZES)) // world // local
    assert epoch_batches(groups, local * world, world) == expected
    orders = {}
    for epoch in (0, 1):
        seen, touched = [], []
        for s in samplers:
            s.set_epoch(epoch)
            batches = list(s)
            assert len(batches) == len(s) == expected and all(len(b) == local for b in batches)
            mine = [i - epoch * n for b in batches for i in b]
            seen += mine
            touched.append({shard_of[i] for i in s.mine()})
            # the shuffle buffer: a rank's images come `window` (2) of its shards at a time, those mixed
            blocks = [shard_of[i] for i in s.mine()]
            first = sorted(set(blocks), key=blocks.index)
            span = {k: (blocks.index(k), len(blocks) - 1 - blocks[::-1].index(k)) for k in first}
            runs = [first[w : w + 2] for w in range(0, len(first), 2)]
            for a, b in zip(runs, runs[1:]):
                assert max(span[k][1] for k in a) < min(span[k][0] for k in b)
        assert len(seen) == len(set(seen)) == expected * local * world  # no image twice in an epoch
        for a in range(world):  # whole shards: no shard read by two ranks
            assert all(not (touched[a] & touched[b]) for b in range(a + 1, world))
        assert set().union(*touched) == set(range(len(groups)))  # every shard dealt
        orders[epoch] = samplers[0].mine()
    assert orders[0] != orders[1]  # another order every epoch
    samplers[0].set_epoch(1)
    whole = list(samplers[0])
    samplers[0].set_epoch(1, start=2)
    assert list(samplers[0]) == whole[2:]  # a resumed epoch goes on where it stopped
    if world == 1:  # one process: every image but the last partial batch
        assert expected * local == n - n % local


def test_eval_batches_of_streamed_shards_score_each_image_once():
    groups = _groups()
    shares = [[i for b in EvalBatches(sum(SIZES), 4, r, 3, groups) for i in b] for r in range(3)]
    assert sorted(i for s in shares for i in s) == list(range(sum(SIZES)))
    assert shares[1] == groups[1] + groups[4]


def test_a_pipe_pattern_trains_fetching_each_shard_once_and_resumes_exactly(sharded, tmp_path, monkeypatch):  # noqa: F811
    out, _ = sharded
    monkeypatch.setenv("RESNETS_SHARD_CACHE", str(tmp_path / "cache"))
    train = sorted(p.name for p in out.glob("train-*.tar"))
    data = _pattern(out, "train-{000000..%06d}" % (len(train) - 1))
    ds = shards.load(data, "train")
    local = shards.load(str(out), "train")
    assert ds.samples and [t for _, t in ds.samples] == local.targets and ds.shard_groups() is not None
    assert local.shard_groups() is None  # local shards are read in any order, as before
    assert all(torch.equal(ds[i][0], local[i][0]) for i in range(0, len(ds), 5))
    keys = dict(model="resnet8", dataset="wds", data=data, val_data=_pattern(out, "val-000000"), batch_size=6)
    keys |= dict(train_crop=32, eval_crop=32, eval_resize=32, epochs=2, checkpoint_steps=1, deterministic=True)
    keys |= dict(out=str(tmp_path / "runs"), name="whole", amp="none", progress=False, workers=0, device="cpu")
    cfg = resolve(None, None, keys)
    whole = engine.train(resolve(None, None, keys | dict(workers=2)))  # two loader workers share the cache
    fetched = sorted(p.name.split("-", 1)[1] for p in (tmp_path / "cache").glob("*.tar"))
    assert fetched == sorted([*train, "val-000000.tar"])  # each once, however many epochs and readers
    assert whole["history"][-1]["step"] == 2 * epoch_batches(ds.shard_groups(), 6, 1)

    class Stop(Exception):
        pass

    deal = ShardBatches.__iter__

    def cut(self):  # the job is stopped in epoch 2 after its first step (a checkpoint after every step)
        for k, batch in enumerate(deal(self)):
            if self.epoch == 1 and k == 1:
                raise Stop
            yield batch

    monkeypatch.setattr(ShardBatches, "__iter__", cut)
    with pytest.raises(Stop):
        engine.train(resolve(None, None, cfg.to_dict() | {"name": "cut"}))
    monkeypatch.setattr(ShardBatches, "__iter__", deal)
    state = load_checkpoint(tmp_path / "runs" / "cut" / "last.pt")
    assert (state["epoch"], state["batch"], state["step"]) == (1, 1, 5)
    # the saved config's pipe: command is not run from the file alone: the command line must say it again
    code, _, err = run_cli("train", "--resume", tmp_path / "runs" / "cut")
    one_line_error(code, err, "config.json's data runs a command", "only from the command line: give --data")
    again = engine.train(resume=tmp_path / "runs" / "cut", overrides=dict(data=data, val_data=keys["val_data"]))
    a, b = load(whole["run_dir"]).state_dict(), load(again["run_dir"]).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_stream_that_fails_or_disagrees_with_its_index_is_named(sharded, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("RESNETS_SHARD_CACHE", str(tmp_path / "cache"))
    copy = tmp_path / "copy"
    shutil.copytree(sharded[0], copy)
    # no index beside the shards, a command that fails, a scheme nothing opens: one line each, nothing written
    for data, needle in (
        (f"pipe:cat {tmp_path}/nowhere/train-000000.tar", "cannot read pipe:cat"),
        ("s3x://bucket/train-{000000..000001}.tar", "cannot read s3x://bucket/index.json"),
        (f"pipe:cat {copy}/train-000000.tar | head -c 10", ": not JSON ("),
        (f"pipe:echo {copy}", "names no .tar shard"),
        (_pattern(copy, "other-000000"), "other-000000.tar is not in"),
    ):
        code, _, err = run_cli("train", *TINY_RUN, "--dataset", "wds", "--data", data, "--out", tmp_path / "r")
        one_line_error(code, err, needle)
        assert not (tmp_path / "r").exists()
    # an index that is not the shards' (another format) is refused before any shard is fetched
    index = json.loads((copy / "index.json").read_text())
    (copy / "index.json").write_text(json.dumps(index | {"format": "other/1"}))
    with pytest.raises(ResnetsError, match="not a shard index"):
        shards.load(_pattern(copy), "train")
    # an index never says what is run or fetched: a command or a URL for a shard's name is refused, nothing runs
    for name in (f"pipe:touch {tmp_path}/PWNED; cat train-000000.tar", "https://127.0.0.1:9/train-000000.tar"):
        evil = json.loads(json.dumps(index))
        evil["splits"]["train"][0]["file"] = name
        (copy / "index.json").write_text(json.dumps(evil))
        code, _, err = run_cli(
            "train", *TINY_RUN, "--dataset", "wds", "--data", _pattern(copy), "--out", tmp_path / "r"
        )
        one_line_error(code, err, "index.json: shard name", "is not a plain file name")
        assert not (tmp_path / "PWNED").exists() and not (tmp_path / "r").exists()
    (copy / "index.json").write_text(json.dumps(index))
    # a shard cut short after its index was written: its images are bad samples, named, and it is fetched once
    (copy / "train-000001.tar").write_bytes((copy / "train-000001.tar").read_bytes()[:3000])
    ds = shards.load(_pattern(copy), "train")
    second = next(i for i, (path, _, _) in enumerate(ds.where) if "000001" in path)
    for i in (second, second + 1):
        with pytest.raises(BadSample, match="cannot fetch train-000001.tar: fetched 3,000 bytes; the index says"):
            ds[i]
    assert ds[0][0].shape[0] == 3  # the other shards are read
    assert not list((tmp_path / "cache").glob("*.part"))  # nothing half-fetched left behind
    assert remote.index_source("pipe:aws s3 cp s3://b/x/train-000007.tar -", "train-000007.tar") == (
        "pipe:aws s3 cp s3://b/x/index.json -"
    )


def test_shards_over_http_are_the_local_shards(sharded, tmp_path, monkeypatch):  # noqa: F811
    """A web server on this machine serving the shard folder: the index and shards fetched over HTTP (urllib),
    every image equal to the local shards'; a missing shard is a bad sample naming it."""
    import functools
    import http.server
    import threading

    out, _ = sharded
    monkeypatch.setenv("RESNETS_SHARD_CACHE", str(tmp_path / "cache"))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(out))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        n = len(list(out.glob("train-*.tar")))
        ds = shards.load(f"{url}/train-{{000000..{n - 1:06d}}}.tar", "train")
        local = shards.load(str(out), "train")
        assert len(ds) == len(local) and all(torch.equal(ds[i][0], local[i][0]) for i in range(len(ds)))
        assert len(list((tmp_path / "cache").glob("*.tar"))) == n
        (tmp_path / "gone").mkdir()
        shutil.copy(out / "index.json", tmp_path / "gone")
        handler.keywords["directory"] = str(tmp_path / "gone")  # the index is there, the shards are not
        shutil.rmtree(tmp_path / "cache")  # (else the copies fetched above are read)
        missing = shards.load(f"{url}/train-000000.tar", "train")
        with pytest.raises(BadSample, match="cannot fetch train-000000.tar"):
            missing[0]
    finally:
        server.shutdown()
        server.server_close()


def test_few_shards_are_held_open_and_a_removed_one_is_fetched_again(sharded, tmp_path, monkeypatch):  # noqa: F811
    """Descriptors are closed least recently used first (so shards the cache removed free their disk), and a
    streamed shard removed from the cache after its fetch is fetched again, not an error."""
    out, _ = sharded
    monkeypatch.setenv("RESNETS_SHARD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(shards, "OPEN_SHARDS", 1)
    ds = shards.load(_pattern(out, "train-{000000..000001}"), "train")
    local = shards.load(str(out), "train")
    first, second = (next(i for i, w in enumerate(ds.where) if f"00000{k}" in w[0]) for k in (0, 1))
    for i in (first, second, first, second):
        assert torch.equal(ds[i][0], local[i][0]) and len(ds._open) == 1
    real = remote.fetch
    calls = []

    def removed_after_fetch(source, name, size):  # the cache's eviction between a fetch and the open
        path = real(source, name, size)
        calls.append(name)
        if len(calls) == 1:
            os.unlink(path)
        return path

    monkeypatch.setattr(remote, "fetch", removed_after_fetch)
    shutil.rmtree(tmp_path / "cache")
    again = shards.load(_pattern(out, "train-{000000..000001}"), "train")
    assert torch.equal(again[first][0], local[first][0]) and calls == ["train-000000.tar"] * 2


class _Server:
    """A web server on 127.0.0.1 in a thread for the tests below: `routes` maps a path to bytes (served whole) or to
    a behaviour ("zeros": zeros without end and no length, "huge": a length of 10^12 then zeros, "quiet": the
    headers then nothing, "slow": 1 KB every 50 ms, "drip": the headers then a byte every 200 ms, "drip-head": a
    header's bytes one every 200 ms, "redirect:URL": a 302 to URL); `hits` counts each path's requests. Every loop
    ends within 10 s or when the server stops."""

    def __init__(self, routes: dict):
        import http.server
        import threading
        from collections import Counter

        self.routes, self.hits, self.stop = routes, Counter(), threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.hits[self.path] += 1
                body = outer.routes.get(self.path)
                if body is None:
                    return self.send_error(404)
                if isinstance(body, str) and body.startswith("redirect:"):
                    self.send_response(302)
                    self.send_header("Location", body[len("redirect:") :])
                    self.send_header("Content-Length", "0")
                    return self.end_headers()
                if body == "drip-head":  # the status line, then a header that never ends
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Drip: ")
                else:
                    self.send_response(200)
                    if isinstance(body, bytes) or body == "huge":
                        self.send_header("Content-Length", str(len(body) if isinstance(body, bytes) else 10**12))
                    self.end_headers()
                if isinstance(body, bytes):
                    return self.wfile.write(body)
                self.wfile.flush()
                paced = {"slow": (b"\0" * 1024, 0.05), "drip": (b"x", 0.2), "drip-head": (b"x", 0.2)}
                chunk, pause = paced.get(body, (b"\0" * (1 << 16), 0))
                deadline = time.monotonic() + 10
                try:
                    while time.monotonic() < deadline and not outer.stop.wait(pause if body != "quiet" else 0.05):
                        if body != "quiet":
                            self.wfile.write(chunk)
                except OSError:  # the client went away
                    pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def _cache(tmp_path) -> list:
    return sorted(p.name.split("-", 1)[1] for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock"))


def test_a_server_that_lies_about_a_shards_size_is_refused_and_the_cache_kept(sharded, tmp_path, monkeypatch):  # noqa: F811
    """Issue 36: an index saying a shard is 10^12 bytes, served zeros without end, with a 10 MB cache: refused before
    any byte is asked for (at load, and by fetch itself), the good shard already cached not evicted, no .part, the
    cache within its bound. A server announcing another length is refused before its body; one sending more than
    the index says is cut at one byte past it."""
    out, _ = sharded
    monkeypatch.setenv("RESNETS_SHARD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RESNETS_SHARD_CACHE_GB", "0.01")
    good = (out / "train-000000.tar").read_bytes()
    index = json.loads((out / "index.json").read_text())
    lying = json.loads(json.dumps(index))
    lying["splits"]["train"][0]["size"] = 10**12
    routes = {"/good/train-000000.tar": good, "/lying/index.json": json.dumps(lying).encode()}
    routes |= {"/lying/train-000000.tar": "zeros", "/zeros/train-000000.tar": "zeros", "/huge/train-000000.tar": "huge"}
    with _Server(routes) as server:
        kept = remote.fetch(f"{server.url}/good/train-000000.tar", "train-000000.tar", len(good))
        t0 = time.monotonic()
        with pytest.raises(
            ResnetsError, match="the index says 1,000,000,000,000 bytes; the cache holds at most 10,000"
        ):
            shards.load(f"{server.url}/lying/train-000000.tar", "train")
        code, _, err = run_cli("train", *TINY_RUN, "--dataset", "wds", "--data", f"{server.url}/lying/train-000000.tar")
        one_line_error(code, err, "train-000000.tar in http://127.0.0.1", "the cache holds at most 10,000,000")
        with pytest.raises(OSError, match=r"the index says 1,000,000,000,000 bytes; .*; not fetched \(http://127"):
            remote.fetch(f"{server.url}/lying/train-000000.tar", "train-000000.tar", 10**12)
        assert server.hits["/lying/train-000000.tar"] == 0 and time.monotonic() - t0 < 10
        with pytest.raises(OSError, match="the server says 1,000,000,000,000 bytes; the index says 2,000,000"):
            remote.fetch(f"{server.url}/huge/train-000000.tar", "train-000000.tar", 2_000_000)
        with pytest.raises(OSError, match=r"fetched 2,000,001\+ bytes; the index says 2,000,000 \(http://127"):
            remote.fetch(f"{server.url}/zeros/train-000000.tar", "train-000000.tar", 2_000_000)
    assert _cache(tmp_path) == ["train-000000.tar"] and open(kept, "rb").read() == good  # kept; nothing half-made
    assert sum(p.stat().st_size for p in (tmp_path / "cache").iterdir()) <= 10**7


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group `pgid` runs (zombies aside), from /proc."""
    from pathlib import Path

    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def _gone(pgid: int) -> bool:
    deadline = time.monotonic() + 5
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _group_alive(pgid)


def test_a_source_that_goes_quiet_is_one_line_within_the_timeout(tmp_path, monkeypatch):
    """Issue 36: a server that sends its headers and then nothing hung the run without a word. Now the index and a
    shard fail within RESNETS_FETCH_TIMEOUT (0.5 s here) in one line naming the source; so do a server that never
    answers and a command that writes nothing, which is killed with everything it started."""
    import socket

    monkeypatch.setenv("RESNETS_SHARD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RESNETS_FETCH_TIMEOUT", "0.5")
    mute = socket.create_server(("127.0.0.1", 0))  # listens, never answers
    routes = {"/q/index.json": "quiet", "/q/train-000000.tar": "quiet"}
    pid = tmp_path / "pid"
    with _Server(routes) as server, mute:
        for source, read in (
            (f"{server.url}/q/train-000000.tar", lambda s: shards.load(s, "train")),
            (f"http://127.0.0.1:{mute.getsockname()[1]}/train-000000.tar", lambda s: shards.load(s, "train")),
            (f"pipe:echo $$ > {pid}; sleep 30; cat train-000000.tar", lambda s: shards.load(s, "train")),
            (f"{server.url}/q/train-000000.tar", lambda s: remote.fetch(s, "train-000000.tar", 10240)),
            (f"pipe:echo $$ > {pid}; sleep 30; cat train-000000.tar", lambda s: remote.fetch(s, "train-000000.tar", 9)),
        ):
            t0 = time.monotonic()
            with pytest.raises((ResnetsError, OSError)) as e:
                read(source)
            assert 0.4 < time.monotonic() - t0 < 3.5, source
            what = str(e.value)
            assert "no data for 0.5 s" in what and source.split("/t")[0][:60] in what and "\n" not in what, what
            if source.startswith("pipe:"):
                assert _gone(int(pid.read_text())), "the command's processes were left running"
        code, _, err = run_cli("train", *TINY_RUN, "--dataset", "wds", "--data", f"{server.url}/q/train-000000.tar")
        one_line_error(code, err, f"cannot read {server.url}/q/index.json: no data for 0.5 s")
    assert not list((tmp_path / "cache").glob("*.part"))
    # another scheme goes through webdataset's gopen (gsutil, curl): its process is watched and killed the same way
    from webdataset.gopen import Pipe, gopen_schemes

    slow = ["sh", "-c", f"echo $$ > {pid}; exec sleep 30"]
    monkeypatch.setitem(gopen_schemes, "slowx", lambda url, mode, bufsize: Pipe(slow, mode=mode))
    t0 = time.monotonic()
    with pytest.raises(ResnetsError, match="cannot read slowx://host/index.json: no data for 0.5 s"):
        remote.read_bounded("slowx://host/index.json", 100)
    assert time.monotonic() - t0 < 4.5
    with pytest.raises(ProcessLookupError):  # killed, and reaped
        os.kill(int(pid.read_text()), 0)
    monkeypatch.setenv("RESNETS_FETCH_TIMEOUT", "soon")
    with pytest.raises(ResnetsError, match="RESNETS_FETCH_TIMEOUT='soon': give seconds"):
        remote.read_bounded("pipe:true", 10)


def test_a_source_that_drips_is_cut_at_its_whole_deadline(tmp_path, monkeypatch):
    """A server or command that sends a byte every 200 ms is never idle for RESNETS_FETCH_TIMEOUT (1 s here), and
    fetched a shard for as long as it dripped. Now a whole fetch of N bytes ends within RESNETS_FETCH_TIMEOUT +
    N / RESNETS_FETCH_MIN_RATE (10,240 bytes at 20 KB/s: 1.5 s, past the 1 s a drip never waits), the headers too (a
    header that never ends), in one line naming the source; nothing half-fetched is left and the command is
    killed."""
    monkeypatch.setenv("RESNETS_SHARD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RESNETS_FETCH_TIMEOUT", "1")
    monkeypatch.setenv("RESNETS_FETCH_MIN_RATE", "0.02")
    assert remote.fetch_deadline(10240) == pytest.approx(1.512)
    pid = tmp_path / "pid"
    routes = {"/d/train-000000.tar": "drip", "/h/train-000000.tar": "drip-head", "/d/index.json": "drip"}
    with _Server(routes) as server:
        for source, read in (
            (f"{server.url}/d/train-000000.tar", lambda s: remote.fetch(s, "train-000000.tar", 10240)),
            (f"{server.url}/h/train-000000.tar", lambda s: remote.fetch(s, "train-000000.tar", 10240)),
            (f"pipe:echo $$ > {pid}; while :; do printf x; sleep 0.2; done", lambda s: remote.fetch(s, "x.tar", 10240)),
            (f"{server.url}/d/index.json", lambda s: remote.read_bounded(s, 10240)),
        ):
            t0 = time.monotonic()
            with pytest.raises((ResnetsError, OSError)) as e:
                read(source)
            took, what = time.monotonic() - t0, str(e.value)
            assert 1.35 < took < 3.5, (source, took, what)  # cut at the whole deadline, not at the idle 1 s
            assert "not fetched within 1.5 s (RESNETS_FETCH_MIN_RATE: at least 0.02 MB/s)" in what, what
            assert source[:40] in what and "\n" not in what, what
            if source.startswith("pipe:"):
                assert _gone(int(pid.read_text())), "the command's processes were left running"
    assert not list((tmp_path / "cache").glob("*.part")) and not list((tmp_path / "cache").glob("*.tar"))
    monkeypatch.setenv("RESNETS_FETCH_MIN_RATE", "0")
    with pytest.raises(ResnetsError, match="RESNETS_FETCH_MIN_RATE='0': give megabytes a second"):
        remote.read_bounded("pipe:true", 10)


def test_a_redirect_is_followed_only_to_http_or_https(tmp_path, monkeypatch):
    """urllib followed a redirect from http:// to ftp://; now a redirect to any scheme but http and https is refused
    in one line naming the source, and the place it names is never contacted. One to http:// is still followed."""
    import socket

    monkeypatch.setenv("RESNETS_SHARD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RESNETS_FETCH_TIMEOUT", "1")
    good = b"a shard" * 100
    target = socket.create_server(("127.0.0.1", 0))  # where the ftp:// redirect leads: counts connections
    ftp = f"ftp://127.0.0.1:{target.getsockname()[1]}/train-000000.tar"
    secret = tmp_path / "secret.tar"
    secret.write_bytes(good)
    routes = {"/good/train-000000.tar": good, "/ftp/train-000000.tar": f"redirect:{ftp}"}
    routes |= {"/file/train-000000.tar": f"redirect:file://{secret}", "/data/train-000000.tar": "redirect:data:,x"}
    with _Server(routes) as server, target:
        server.routes["/http/train-000000.tar"] = f"redirect:{server.url}/good/train-000000.tar"
        for where in ("ftp", "file", "data"):
            source = f"{server.url}/{where}/train-000000.tar"
            with pytest.raises(OSError) as e:
                remote.fetch(source, "train-000000.tar", len(good))
            what = str(e.value)
            assert "redirect" in what.lower() and source in what and "\n" not in what, what
            with pytest.raises(ResnetsError, match=f"(?i)cannot read {source}: .*redirect"):
                remote.read_bounded(source, 10**6)
        assert "a redirect is followed only to http:// or https://" in str(
            pytest.raises(OSError, remote.fetch, f"{server.url}/ftp/train-000000.tar", "train-000000.tar", 700).value
        )
        target.setblocking(False)
        with pytest.raises(BlockingIOError):  # nobody connected to the ftp:// address
            target.accept()
        path = remote.fetch(f"{server.url}/http/train-000000.tar", "train-000000.tar", len(good))
        assert open(path, "rb").read() == good and server.hits["/good/train-000000.tar"] == 1
    assert _cache(tmp_path) == ["train-000000.tar"]


def test_a_fetch_leaves_no_lock_and_two_never_fetch_one_shard_at_once(sharded, tmp_path, monkeypatch):  # noqa: F811
    """The shard's .lock was left in the cache after every fetch. Now its holder removes it before letting go, and
    a fetch removes the ones nobody holds (a killed process's), not a held one; still one fetch of a shard at a time
    on the machine: a fetch that waited on a removed lock file takes the new one, so a process that comes later
    never runs beside it (three fetches of a failing source, the last while the second runs), and readers that
    wait for a good fetch reuse its file."""
    import fcntl
    import threading

    out, _ = sharded
    cache = tmp_path / "cache"
    monkeypatch.setenv("RESNETS_SHARD_CACHE", str(cache))
    shard = out / "train-000000.tar"
    remote.fetch(_pattern(out, "train-000000"), "train-000000.tar", shard.stat().st_size)
    assert not list(cache.glob("*.lock"))
    (cache / "abc-train-000001.tar.lock").write_text("")  # a killed process's
    held = open(cache / "abc-train-000002.tar.lock", "a")  # noqa: SIM115  (a live fetch's)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        remote.fetch(_pattern(out, "train-000001"), "train-000001.tar", (out / "train-000001.tar").stat().st_size)
        assert [p.name for p in cache.glob("*.lock")] == ["abc-train-000002.tar.lock"]
    finally:
        held.close()
    log, busy = tmp_path / "log", tmp_path / "busy"

    def fetching(source, size, results):
        try:
            results.append(remote.fetch(source, "train-000003.tar", size))
        except OSError as e:
            results.append(str(e))

    failing = f"pipe:mkdir {busy} || echo overlap >> {log}; echo run >> {log}; sleep 1; rmdir {busy}; exit 3"
    good = f"pipe:echo run >> {log}; sleep 0.4; cat {shard} # train-000003.tar"
    for source, starts, runs in ((failing, (0, 0.3, 1.5), 3), (good, (0, 0.1, 0.2), 1)):
        log.write_text("")
        results, threads = [], []
        for start in starts:
            time.sleep(start - (starts[len(threads) - 1] if threads else 0))
            threads.append(threading.Thread(target=fetching, args=(source, shard.stat().st_size, results)))
            threads[-1].start()
        for t in threads:
            t.join(30)
        assert log.read_text().split() == ["run"] * runs, results  # one at a time (no "overlap"); once if it works
        assert len(results) == 3 and not list(cache.glob("*.lock")), results
    assert len(set(results)) == 1 and open(results[0], "rb").read() == shard.read_bytes()


def test_a_part_left_by_a_dead_process_is_removed_by_the_next_fetch(sharded, tmp_path, monkeypatch):  # noqa: F811
    """A fetch killed by SIGKILL (nothing of it can clean up) leaves its .part; the next fetch on the machine removes
    the .part files of processes that are gone, and only those: not a live one's, nor another machine's."""
    import socket
    import subprocess

    out, _ = sharded
    monkeypatch.setenv("RESNETS_SHARD_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    left = {
        "dead": f"abc-train-000001.tar.{dead.pid}@{host}.part",
        "old": f"abc-train-000002.tar.{dead.pid}.part",  # written before the host was in the name
        "live": f"abc-train-000003.tar.{os.getpid()}@{host}.part",
        "other": f"abc-train-000004.tar.{dead.pid}@not-{host}.part",
    }
    for name in left.values():
        (tmp_path / "cache" / name).write_bytes(b"\0" * 100)
    remote.fetch(_pattern(out, "train-000000"), "train-000000.tar", (out / "train-000000.tar").stat().st_size)
    assert sorted(p.name for p in (tmp_path / "cache").glob("*.part")) == sorted([left["live"], left["other"]])


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("kind", ["http", "pipe"])
def test_a_fetch_stopped_by_a_signal_leaves_no_part(tmp_path, sig, kind):
    """A process stopped by SIGTERM (a scheduler's preemption) or SIGINT while it downloads a shard leaves no .part
    and no command running, and ends by the signal as it would have (SIGTERM: killed by it; SIGINT:
    KeyboardInterrupt); the handlers are the old ones again once a fetch ends."""
    import signal
    import subprocess
    import sys

    cache, pid = tmp_path / "cache", tmp_path / "pid"
    stream = "for i in $(seq 200); do head -c 1024 /dev/zero; sleep 0.05; done"  # 10 s at most
    code = (
        "import signal, sys; from resnets.data import remote\n"
        "before = signal.getsignal(signal.SIGTERM)\n"
        "remote.read_bounded('pipe:true', 10)\n"
        "assert signal.getsignal(signal.SIGTERM) is before\n"
        "remote.fetch(sys.argv[1], 'train-000000.tar', 10**7)\n"
    )
    with _Server({"/slow/train-000000.tar": "slow"}) as server:
        source = f"{server.url}/slow/train-000000.tar" if kind == "http" else f"pipe:echo $$ > {pid}; {stream}"
        p = subprocess.Popen(
            [sys.executable, "-c", code, source],
            env={**os.environ, "RESNETS_SHARD_CACHE": str(cache)},
            stderr=subprocess.PIPE,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # (as in test_rundir: not inherited)
        )
        deadline = time.monotonic() + 30
        while not list(cache.glob("*.part")) and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert p.poll() is None, p.stderr.read().decode()
        time.sleep(0.3)  # some of it written
        assert list(cache.glob("*.part"))[0].stat().st_size > 0
        p.send_signal(getattr(signal, sig))
        err = p.communicate(timeout=30)[1].decode()
    assert not list(cache.glob("*.part")) and not list(cache.glob("*.tar")), err
    if sig == "SIGTERM":
        assert p.returncode == -signal.SIGTERM, err
    else:
        assert "KeyboardInterrupt" in err, err
    if kind == "pipe":
        assert _gone(int(pid.read_text())), "the command's processes were left running"
