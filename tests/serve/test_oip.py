"""The Open Inference Protocol (serve/oip.py, issue 40) called by NVIDIA's own client, tritonclient[http], against a
real `resnets serve` on 127.0.0.1: health, readiness, the model's metadata, and infer with the binary-data extension
and in JSON, answering what /v1/predict answers for the same images; bad requests one JSON error each."""

import base64
import json

import numpy as np
import pytest
from conftest import Server

httpx = pytest.importorskip("httpx")
triton = pytest.importorskip("tritonclient.http")
triton_utils = pytest.importorskip("tritonclient.utils")


def _client(server):
    return triton.InferenceServerClient(url=f"127.0.0.1:{server.port}", network_timeout=60)


def _predicted(server, photos):
    answer = httpx.post(
        server.url + "/v1/predict?top_k=3", files=[("files", (p.name, p.read_bytes())) for p in photos], timeout=60
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["results"]


def test_tritonclient_sees_a_live_ready_model_and_its_metadata(live_server):
    client = _client(live_server)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("resnet18")
    meta = client.get_model_metadata("resnet18")
    assert meta["inputs"] == [
        {"name": "image", "datatype": "BYTES", "shape": [-1]},
        {"name": "input", "datatype": "FP32", "shape": [-1, 3, 64, 64]},  # the Triton export's input
    ]
    assert {o["name"]: o["shape"] for o in meta["outputs"]} == {
        "logits": [-1, 5],
        "probabilities": [-1, 5],
        "features": [-1, 512],  # the pooled features /v1/embed answers
    }
    assert meta["platform"] == "pytorch_libtorch"  # (--backend eager; onnxruntime_onnx on ONNX Runtime)
    assert client.get_server_metadata()["name"] == "resnets"
    assert not client.is_model_ready("another")


def test_tritonclient_infers_in_binary_and_json_as_v1_predict_does(live_server, serve_files):
    _, photos, _ = serve_files
    photos = photos[:3]
    client = _client(live_server)
    image = triton.InferInput("image", [len(photos)], "BYTES")
    image.set_data_from_numpy(np.array([p.read_bytes() for p in photos], dtype=np.object_), binary_data=True)
    asked = [
        triton.InferRequestedOutput("probabilities", binary_data=True),
        triton.InferRequestedOutput("logits", binary_data=False),
    ]
    result = client.infer("resnet18", [image], outputs=asked)
    probs, logits = result.as_numpy("probabilities"), result.as_numpy("logits")
    assert probs.shape == logits.shape == (3, 5) and probs.dtype == np.float32
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    expected = _predicted(live_server, photos)
    for row, want in zip(probs, expected):
        assert int(row.argmax()) == want["top"][0]["index"]
        assert [round(float(row[t["index"]]), 4) for t in want["top"]] == [round(t["prob"], 4) for t in want["top"]]
    # the pooled features, as /v1/embed answers them
    feats = client.infer("resnet18", [image], outputs=[triton.InferRequestedOutput("features")]).as_numpy("features")
    embedded = httpx.post(
        live_server.url + "/v1/embed", files=[("files", (p.name, p.read_bytes())) for p in photos], timeout=60
    ).json()["results"]
    np.testing.assert_allclose(feats, np.array([e["embedding"] for e in embedded]), atol=1e-4, rtol=1e-4)
    # Triton's classification extension: "score:index:label", best first
    ranked = client.infer("resnet18", [image], outputs=[triton.InferRequestedOutput("probabilities", class_count=2)])
    top = ranked.as_numpy("probabilities")
    assert top.shape == (3, 2)
    first = top[0][0].decode() if isinstance(top[0][0], bytes) else top[0][0]
    score, index, label = first.split(":", 2)
    assert (int(index), label) == (expected[0]["top"][0]["index"], expected[0]["top"][0]["class"])
    assert abs(float(score) - expected[0]["top"][0]["prob"]) < 1e-4
    by_logit = client.infer("resnet18", [image], outputs=[triton.InferRequestedOutput("logits", class_count=1)])
    first = by_logit.as_numpy("logits")[0][0]
    value = float((first.decode() if isinstance(first, bytes) else first).split(":")[0])
    assert abs(value - float(logits[0].max())) < 1e-4  # the asked output's own values: a logit, not a probability
    # the same request in JSON, the images as base64 strings (the protocol's JSON has no raw bytes)
    body = {
        "id": "r1",
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1],
                "data": [base64.b64encode(photos[0].read_bytes()).decode()],
            }
        ],
        "outputs": [{"name": "probabilities"}],
    }
    answer = httpx.post(live_server.url + "/v2/models/resnet18/infer", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    out = answer.json()
    assert out["id"] == "r1" and out["model_name"] == "resnet18"
    (spec,) = out["outputs"]
    assert spec["datatype"] == "FP32" and spec["shape"] == [1, 5]
    assert np.allclose(spec["data"], probs[0], atol=1e-5)


ONE = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aGVsbG8="]}]}


def _typed(shape, data, kind="FP32") -> dict:
    return {"inputs": [{"name": "input", "datatype": kind, "shape": shape, "data": data}]}


@pytest.mark.parametrize(
    "body, headers, status, needle",
    [
        (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}), {}, 400, "BYTES"),
        (json.dumps({"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1]}]}), {}, 400, "UINT8 pixels"),
        (
            json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]}),
            {},
            400,
            "base64",
        ),
        (
            json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aGVsbG8="]}]}),
            {},
            415,
            "",
        ),
        ("[" * 5000, {}, 400, "nested"),
        (
            json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [0], "data": []}]}),
            {},
            400,
            "no images",
        ),
        ("{}", {"Inference-Header-Content-Length": "999"}, 400, "Inference-Header-Content-Length"),
        ("{}", {"Inference-Header-Content-Length": "9" * 5000}, 400, "Inference-Header-Content-Length"),
        (json.dumps({**ONE, "outputs": [{"name": "logits"}] * 3}), {}, 400, "asked twice"),  # (a 98 MB answer)
        (json.dumps({**ONE, "parameters": [1]}), {}, 400, '"parameters" is an object'),
        (json.dumps({"inputs": [{**ONE["inputs"][0], "parameters": 5}]}), {}, 400, '"parameters" is an object'),
        (
            json.dumps({**ONE, "outputs": [{"name": "logits", "parameters": {"classification": True}}]}),
            {},
            400,
            "classification",
        ),
        (
            json.dumps({**ONE, "outputs": [{"name": "logits", "parameters": {"binary_data": "false"}}]}),
            {},
            400,
            "true or false",
        ),
        (json.dumps({"inputs": [{**ONE["inputs"][0], "data": ["aGVsbG8\u00e9"]}]}), {}, 400, "base64"),
        (json.dumps({"inputs": [{**ONE["inputs"][0], "shape": [True]}]}), {}, 400, "shape"),
        (json.dumps({**ONE, "id": 7}), {}, 400, '"id" is a string'),
        (json.dumps({**ONE, "junk": [0.5] * 2_000_000}), {}, 400, "far more values"),  # 64 images of 3x64x64: 786,432
        (json.dumps(_typed([1, 3, 32, 32], [0.0] * 3072)), {}, 400, "shape [N, 3, 64, 64]"),
        (json.dumps(_typed([1, 3, 64, 64], [0.5] * 12287 + [float("nan")])), {}, 400, "not finite"),
        (json.dumps(_typed([1, 3, 64, 64], [7] * 12287 + [300], "UINT8")), {}, 400, "from 0 to 255"),
        (json.dumps(_typed([1, 3, 64, 64], [7] * 12287 + [1.5], "UINT8")), {}, 400, "12288 numbers (UINT8)"),
        (json.dumps(_typed([1, 3, 64, 64], [0.5] * 12287)), {}, 400, "12288 numbers (FP32)"),
        (json.dumps(_typed([1, 3, 64, 64], ["0.5"] * 12288)), {}, 400, "12288 numbers (FP32)"),
        (json.dumps(_typed([1, 3, 64, 64], [[0.5] * 12287, [0.5]])), {}, 400, "nested row-major"),
        (json.dumps(_typed([65, 3, 64, 64], [])), {}, 413, "--max-files"),
        (json.dumps(_typed([1, 3, 64, 64], [0.5] * 12287 + [True])), {}, 400, "12288 numbers (FP32)"),
        (json.dumps(_typed([1, 3, 64, 64], [1] * 12287 + [True], "UINT8")), {}, 400, "12288 numbers (UINT8)"),
        (json.dumps(_typed([1, 3, 64, 64], [0.5] * 12288, [])), {}, 400, "the inputs are"),  # (unhashable)
        (json.dumps({**ONE, "outputs": [{"name": ["logits"]}]}), {}, 400, "unknown output"),
        (json.dumps({**ONE, "outputs": [{"name": {"a": 1}}]}), {}, 400, "unknown output"),
        (json.dumps(_typed([1, 3, 64, 64], [3e38] * 12288)), {}, 422, "not finite for these inputs"),
        (json.dumps(_typed([1, 3, 64, 64], [0] * 12288, "FP16")), {}, 400, '"input" (FP32 normalised, or UINT8'),
        (json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1000]}]}), {}, 413, "--max-files"),
        (
            json.dumps(
                {
                    "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aGVsbG8="]}],
                    "outputs": [{"name": "boxes"}],
                }
            ),  # fmt: skip
            {},
            400,
            "unknown output",
        ),
    ],
)
def test_bad_infer_requests_are_one_json_error_each(live_server, body, headers, status, needle):
    answer = httpx.post(
        live_server.url + "/v2/models/resnet18/infer",
        content=body,
        headers={"content-type": "application/json", **headers},
        timeout=60,
    )
    assert answer.status_code == status and needle in answer.json()["error"], answer.text
    assert httpx.get(live_server.url + "/v2/models/other").status_code == 404


def _pixels(photos) -> np.ndarray:
    """The photos as the model's input size in pixels: (N, 3, 64, 64) uint8."""
    from PIL import Image

    return np.stack([np.asarray(Image.open(p).convert("RGB").resize((64, 64))).transpose(2, 0, 1) for p in photos])


def test_tritonclient_gives_typed_tensors_fp32_normalised_or_uint8_pixels(live_server, serve_files):
    """The typed input "input": UINT8 pixels (binary), which the server normalises, and FP32 already normalised
    (JSON), as the Triton export's model takes it: both answer the logits the model gives those pixels here."""
    import torch

    import resnets
    from resnets.meta import preprocessing_for

    weights, photos, _ = serve_files
    model = resnets.load(weights).eval()
    pixels = _pixels(photos[:3])
    normalised = preprocessing_for(model).normalizer()(torch.from_numpy(pixels))
    with torch.no_grad():
        want = model(normalised).numpy()
    client = _client(live_server)
    for kind, data, binary in (("UINT8", pixels, True), ("FP32", normalised.numpy(), False)):
        given = triton.InferInput("input", list(data.shape), kind)
        given.set_data_from_numpy(data, binary_data=binary)
        result = client.infer("resnet18", [given], outputs=[triton.InferRequestedOutput("logits")])
        np.testing.assert_allclose(result.as_numpy("logits"), want, atol=1e-4, rtol=1e-4, err_msg=kind)


def test_a_batch_of_decoded_and_given_images_runs_as_each_would_alone(serve_files):
    """A decoded image (uint8) and one given normalised (FP32) in one batch: each row is what it gives alone."""
    import torch

    import resnets
    from resnets.serve import app

    svc = app(resnets.load(serve_files[0]), backend="eager", device="cpu").state.service
    pixels = torch.from_numpy(_pixels(serve_files[1][:2]))
    normalised = svc.normalize(pixels[1:])[0]
    with torch.no_grad():
        mixed = svc.forward(svc.collate([pixels[0], normalised]))
        alone = svc.forward(svc.collate([pixels[0], pixels[1]]))
    assert svc.collate([pixels[0], normalised]).dtype == torch.float32
    torch.testing.assert_close(mixed, alone, atol=1e-5, rtol=1e-5)


def test_the_protocol_is_behind_the_token_and_its_health_is_not(serve_files):
    server = Server(serve_files[0], "--backend", "eager", "--model-name", "pets", env={"RESNETS_SERVE_TOKEN": "s3cret"})
    try:
        assert httpx.get(server.url + "/v2/health/ready").status_code == 200
        assert httpx.get(server.url + "/v2/models/pets").status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        assert httpx.get(server.url + "/v2/models/pets", headers=auth).json()["name"] == "pets"
        client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
        assert client.is_model_ready("pets", headers=auth)
        with pytest.raises(triton_utils.InferenceServerException, match="bearer token"):  # the protocol's {"error"}
            client.get_model_metadata("pets")
        assert httpx.get(server.url + "/v2/models/pets/config", headers=auth).json()["error"] == "Not Found"
    finally:
        assert server.stop() == 0, server.output()


def test_tritonclient_gets_a_detectors_boxes_as_v1_detect_gives_them(tiny_detector, shapes_set):
    """A detector in the protocol: its metadata, and per image the boxes, scores and labels /v1/detect answers
    (padded to the most boxes an image has: scores 0, labels -1) with each image's count; the "score" parameter
    keeps what ?score= keeps; no typed input and no classification extension."""
    server = Server(tiny_detector, "--model-name", "shapes")
    try:
        client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}", network_timeout=60)
        meta = client.get_model_metadata("shapes")
        assert [i["name"] for i in meta["inputs"]] == ["image"]
        assert {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]} == {
            "boxes": ("FP32", [-1, -1, 4]),
            "scores": ("FP32", [-1, -1]),
            "labels": ("INT64", [-1, -1]),
            "count": ("INT64", [-1]),
        }
        photos = sorted((shapes_set / "val" / "images").iterdir())

        def as_v1_detect(score: float):
            want = httpx.post(
                server.url + f"/v1/detect?score={score}",
                files=[("files", (p.name, p.read_bytes())) for p in photos],
                timeout=60,
            ).json()["results"]
            image = triton.InferInput("image", [len(photos)], "BYTES")
            image.set_data_from_numpy(np.array([p.read_bytes() for p in photos], dtype=np.object_), binary_data=True)
            got = client.infer("shapes", [image], parameters={"score": score})
            boxes, scores, labels, count = (got.as_numpy(n) for n in ("boxes", "scores", "labels", "count"))
            assert count.tolist() == [len(w["boxes"]) for w in want] and boxes.shape == (len(photos), max(count), 4)
            for i, w in enumerate(want):
                n = count[i]
                assert labels[i, :n].tolist() == [b["label"] for b in w["boxes"]]
                assert scores[i, :n] == pytest.approx([b["score"] for b in w["boxes"]], abs=1e-4)
                assert boxes[i, :n] == pytest.approx(np.array([b["box"] for b in w["boxes"]]).reshape(n, 4), abs=0.01)
                assert (labels[i, n:] == -1).all() and (scores[i, n:] == 0).all()
            return count, scores

        every, scores = as_v1_detect(0.0)
        middle = round(float(np.median(scores[scores > 0])), 4)
        fewer, _ = as_v1_detect(middle)  # "score" keeps what ?score= keeps: here about half of them, padded
        assert every.sum() > fewer.sum() > 0, (every, fewer)
        bad = [
            ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 64, 64]}]}, 'takes "image" only'),
            ({**ONE, "outputs": [{"name": "boxes", "parameters": {"classification": 1}}]}, "classification ranks"),
            ({**ONE, "parameters": {"score": 2}}, '"score" is a number from 0 to 1'),
            ({**ONE, "outputs": [{"name": "logits"}]}, "unknown output 'logits'"),
        ]
        for body, needle in bad:
            answer = httpx.post(server.url + "/v2/models/shapes/infer", json=body, timeout=60)
            assert answer.status_code == 400 and needle in answer.json()["error"], answer.text
    finally:
        assert server.stop() == 0, server.output()
