"""Dynamic batching (serve/batcher.py): concurrent requests share model batches and are answered as one by one."""

import asyncio
import re

import pytest
import torch

import resnets
from resnets.inference import predict

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def test_concurrent_requests_are_batched_and_answer_as_one_by_one(live_server, serve_files):
    weights, photos, _ = serve_files
    model = resnets.load(weights)
    ref = {p.name: r["top"] for p, r in zip(photos, predict(model, [str(p) for p in photos], workers=0))}

    def batch_sizes() -> tuple[float, float]:
        text = httpx.get(live_server.url + "/metrics").text
        total = float(re.search(r"^resnets_batch_size_sum (\S+)", text, re.M)[1])
        count = float(re.search(r"^resnets_batch_size_count (\S+)", text, re.M)[1])
        return total, count

    before = batch_sizes()

    async def many():
        async with httpx.AsyncClient(timeout=60) as client:
            jobs = [
                client.post(live_server.url + "/v1/predict", files={"files": (p.name, p.read_bytes())})
                for _ in range(6)
                for p in photos
            ]
            return await asyncio.gather(*jobs)

    answers = asyncio.run(many())
    assert all(a.status_code == 200 for a in answers)
    for a in answers:
        res = a.json()["results"][0]
        assert [t["class"] for t in res["top"]] == [t["class"] for t in ref[res["name"]]]
        assert [t["prob"] for t in res["top"]] == pytest.approx([t["prob"] for t in ref[res["name"]]], abs=1e-5)
    after = batch_sizes()
    images, batches = after[0] - before[0], after[1] - before[1]
    assert images == len(answers) and batches < images  # grouped: fewer model batches than images

    async def mixed():  # Grad-CAM's backward pass beside batches running through the same weights
        async with httpx.AsyncClient(timeout=60) as client:
            jobs = [
                client.post(
                    live_server.url + ("/v1/explain" if i % 3 == 0 else "/v1/predict"),
                    files={"files": (p.name, p.read_bytes())},
                )
                for i, p in enumerate(photos * 3)
            ]
            return await asyncio.gather(*jobs)

    assert [a.status_code for a in asyncio.run(mixed())] == [200] * len(photos) * 3


def _batched(run, images, *, max_batch=4, max_wait_s=0.05, max_queue=64, stagger=0.0, collate=None):
    """Submit each list of `images` as a request of its own (`stagger` s apart); the answers, and the sizes of the
    batches `run` was given."""
    from resnets.serve import Batcher

    sizes = []

    async def go():
        b = Batcher(run, max_batch, max_wait_s, max_queue, observe_batch=sizes.append, collate=collate)
        b.start()
        try:

            async def one(i, request):
                await asyncio.sleep(i * stagger)
                return await b.submit(request)

            return await asyncio.gather(*(one(i, r) for i, r in enumerate(images)), return_exceptions=True)
        finally:
            await b.stop()

    return asyncio.run(go()), sizes


def test_batches_fill_to_max_batch_and_keep_each_requests_rows():
    """Ten one-image requests at once: batches of at most 4, every image run once, each answer its own row."""
    calls = []

    def run(x):
        calls.append(len(x))
        return x.flatten(1).sum(1, keepdim=True) * 10

    requests = [[torch.full((1, 2, 2), float(i))] for i in range(10)]
    answers, sizes = _batched(run, requests, max_batch=4, max_wait_s=0.2)
    assert [a[0].item() for a in answers] == [40.0 * i for i in range(10)]
    assert calls == sizes and sum(sizes) == 10 and max(sizes) == 4 and len(sizes) == 3


def test_a_lone_image_waits_at_most_max_wait():
    import time

    t0 = time.perf_counter()
    answers, sizes = _batched(lambda x: x.flatten(1), [[torch.zeros(1, 2, 2)]], max_batch=64, max_wait_s=0.3)
    waited = time.perf_counter() - t0
    assert sizes == [1] and answers[0][0].shape == (4,) and 0.25 < waited < 5


def test_a_failing_batch_is_run_again_image_by_image():
    """The image that breaks a batch fails alone; the others in its batch get their rows."""

    def run(x):
        if (x < 0).any():
            raise ValueError("negative pixels")
        return x.flatten(1)[:, :1]

    requests = [[torch.full((1, 1, 1), float(v))] for v in (1, 2, -1, 3)]
    answers, sizes = _batched(run, requests, max_batch=4, max_wait_s=0.2)
    assert isinstance(answers[2], ValueError)
    assert [a[0].item() for i, a in enumerate(answers) if i != 2] == [1.0, 2.0, 3.0]
    assert sizes == [4]


def test_a_full_queue_is_503_with_retry_after():
    from resnets.serve import HTTPFailure

    requests = [[torch.zeros(1, 1, 1)] * 3, [torch.zeros(1, 1, 1)] * 3]
    answers, _ = _batched(lambda x: x.flatten(1), requests, max_queue=4, max_wait_s=0.2)
    full = [a for a in answers if isinstance(a, HTTPFailure)]
    assert len(full) == 1 and full[0].status == 503 and full[0].headers == {"Retry-After": "1"}
    assert full[0].kind == "queue_full" and "at most 4" in full[0].detail


def test_a_list_collate_batches_images_of_any_size():
    """A detector's batcher (collate=list): images of different sizes share a batch; a failing one fails alone."""

    def run(images):
        if any(im.shape[1] == 13 for im in images):
            raise ValueError("no images 13 pixels high")
        return [torch.tensor(float(im.shape[1] * im.shape[2])) for im in images]

    requests = [[torch.zeros(3, 10, 20)], [torch.zeros(3, 7, 5), torch.zeros(3, 13, 2)], [torch.zeros(3, 4, 4)]]
    answers, sizes = _batched(run, requests, max_batch=8, max_wait_s=0.2, collate=list)
    assert [a.item() for a in answers[0]] == [200.0] and [a.item() for a in answers[2]] == [16.0]
    assert isinstance(answers[1], ValueError) and sizes == [4]


def test_an_image_the_queue_would_make_late_is_503_and_never_run():
    """Five one-image requests with 0.85 s to go, on a model taking 0.2 s an image (measured): those the queue
    leaves time for run; the others are answered 503 with Retry-After when their turn comes, never run."""
    import time

    from resnets.serve import Batcher, HTTPFailure

    runs = []

    def run(x):
        runs.append(len(x))
        time.sleep(0.2)
        return x.flatten(1)

    async def go():
        b = Batcher(run, 1, 0.0, 64)
        b.start()
        b.measured(1, 0.2)  # an image of one pixel takes 0.2 s
        try:
            deadline = asyncio.get_running_loop().time() + 0.85
            jobs = [b.submit([torch.zeros(1, 1, 1)], deadline=deadline) for _ in range(5)]
            return await asyncio.gather(*jobs, return_exceptions=True)
        finally:
            await b.stop()

    answers = asyncio.run(go())
    late = [a for a in answers if isinstance(a, HTTPFailure)]
    assert runs == [1, 1, 1] and len(late) == 2, answers
    assert all(a.status == 503 and a.kind == "overloaded" and int(a.headers["Retry-After"]) >= 1 for a in late)
