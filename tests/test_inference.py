"""Inference on real photos (scikit-image's) with models the tests make: predict, embed, similar, explain."""

import pytest
import torch

import resnets
from resnets import inference as I


def _reference_probs(model, path):
    """An independent path: Pillow decode, v2 transforms on a PIL image, plain normalisation."""
    from PIL import Image
    from torchvision.transforms import v2

    tf = v2.Compose(
        [
            v2.Resize(84, antialias=True),
            v2.CenterCrop(72),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    with Image.open(path) as im:
        x = tf(im.convert("RGB"))
    with torch.no_grad():
        return model(x[None]).softmax(1)[0]


def test_predict_matches_an_independent_pipeline_and_lists_bad_files(photos, model_file):
    model = resnets.load(model_file)
    results = I.predict(model, [photos], top_k=3, workers=2, batch_size=2)
    by_name = {r["path"].split("/photos")[-1].split("/", 1)[-1]: r for r in results}
    assert set(by_name) == {
        "astronaut.jpg",
        "camera.png",
        "coffee.png",
        "sub/chelsea.jpg",
        "sub/rocket.webp",
        "sub/truncated.jpg",
    }
    assert "error" in by_name["sub/truncated.jpg"]
    for name in ("coffee.png", "sub/chelsea.jpg", "camera.png"):
        top = by_name[name]["top"]
        assert len(top) == 3 and top[0]["prob"] >= top[1]["prob"] >= top[2]["prob"]
        ref = _reference_probs(model, photos / name)
        assert top[0]["index"] == int(ref.argmax()) and top[0]["prob"] == pytest.approx(float(ref.max()), abs=2e-3)
        assert top[0]["class"] == ["cat", "coffee", "person", "rocket"][top[0]["index"]]


def test_the_decode_at_the_models_size_agrees_with_the_full_size_decode(photos, model_file, monkeypatch):
    """The photos (400-600 px) are more than twice this model's resize (84): decoded halved, then resized as the
    full-size decode is. The same top class and embeddings within a few percent of the exact path's."""
    model = resnets.load(model_file)
    fast, files, _ = I.embed(model, [photos], workers=0)
    monkeypatch.setenv("RESNETS_EXACT_DECODE", "1")
    exact, same, _ = I.embed(model, [photos], workers=0)
    assert files == same and not torch.equal(fast, exact)  # not the same computation ...
    assert torch.nn.functional.cosine_similarity(fast, exact).min() > 0.99  # ... to within a few percent
    top_exact = [r["top"][0]["index"] for r in I.predict(model, files, workers=0)]
    monkeypatch.delenv("RESNETS_EXACT_DECODE")
    assert [r["top"][0]["index"] for r in I.predict(model, files, workers=0)] == top_exact


def test_embed_index_and_similar(photos, model_file, tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETS_EXACT_DECODE", "1")  # the full-size decode, as the reference below
    model = resnets.load(model_file)
    emb, files, errors = I.embed(model, [photos], workers=0)
    assert emb.shape == (5, 512) and len(files) == 5 and len(errors) == 1
    with torch.no_grad():
        pre = model.meta.preprocessing  # the model's own eval transform and normaliser
        x = torch.stack([pre.normalizer()(pre.transform()(I.decode(f))) for f in files])
        assert torch.allclose(emb, model.forward_head(model.forward_features(x), pre_logits=True), atol=1e-5)
    I.save_index(tmp_path / "idx.safetensors", emb, files, weights=str(model_file), layer=None)
    index, names, _ = I.load_index(tmp_path / "idx.safetensors")
    scores, idx = I.nearest(index[2:3], index, k=3)
    assert idx[0, 0] == 2 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)  # an image is its own nearest neighbour
    maps, _, _ = I.embed(model, [photos / "coffee.png"], layer="layer3", workers=0)
    assert maps.shape == (1, 256, 5, 5)


def test_grad_cam_matches_autograd(model_file):
    model = resnets.load(model_file)
    x = torch.randn(3, 64, 64)
    cam, cls, prob = I.grad_cam(model, x, target=1)
    assert cls == 1 and cam.shape == (64, 64) and float(cam.max()) == pytest.approx(1.0) and float(cam.min()) >= 0
    feats = {}
    h = model.layer4.register_forward_hook(lambda m, i, o: feats.__setitem__("a", o))
    logits = model(x[None])
    h.remove()
    (g,) = torch.autograd.grad(logits[0, 1], feats["a"])
    ref = torch.relu((g[0].mean((1, 2))[:, None, None] * feats["a"][0]).sum(0)).detach()
    ref = torch.nn.functional.interpolate(ref[None, None], size=(64, 64), mode="bilinear")[0, 0]
    assert torch.allclose(cam, ref / ref.max(), atol=1e-5)


def test_predict_takes_pil_images_and_tensors_as_well_as_paths(photos, model_file, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("RESNETS_EXACT_DECODE", "1")  # files decoded at full size, as the images in memory are
    from torchvision.io import read_image

    model = resnets.load(model_file)
    by_path = I.predict(model, [photos / "coffee.png", photos / "camera.png"], workers=0, top_k=3)
    with Image.open(photos / "coffee.png") as a, Image.open(photos / "camera.png") as b:
        by_pil = I.predict(model, [a.copy(), b.copy()], top_k=3)
    by_tensor = I.predict(
        model, [read_image(str(photos / "coffee.png")), read_image(str(photos / "camera.png"))], top_k=3
    )
    for got in (by_pil, by_tensor):
        assert [r["input"] for r in got] == [0, 1]
        for r, ref in zip(got, by_path):
            assert [t["index"] for t in r["top"]] == [t["index"] for t in ref["top"]]
            assert r["top"][0]["prob"] == pytest.approx(ref["top"][0]["prob"], abs=1e-4)
    with pytest.raises(resnets.ResnetsError, match="paths, PIL images or"):
        I.predict(model, [torch.zeros(2, 2)])
    with pytest.raises(resnets.ResnetsError, match="input 1: "):  # its position among all inputs, not in its batch
        I.predict(model, [read_image(str(photos / "coffee.png")), "not an image"], batch_size=1)


def test_embed_of_nothing_readable_says_why(model_file, tmp_path):
    """When no image can be read the one line names the first one and its reason (it once said only that none
    could), as predict's rows do."""
    (tmp_path / "icon.jpg").write_bytes(b"\x00\x00\x01\x00" + bytes(60))
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(resnets.ResnetsError) as e:
        I.embed(resnets.load(model_file), [tmp_path / "icon.jpg", tmp_path / "empty.png"], workers=0)
    assert "icon.jpg: an ICO icon" in str(e.value) and "(and 1 more)" in str(e.value) and "\n" not in str(e.value)


def _clustered(n: int, d: int, clusters: int, seed: int) -> torch.Tensor:
    """n rows drawn around `clusters` random centres (a centre's rows nearer each other than any other's)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, d, generator=g)
    return centres[torch.randint(0, clusters, (n,), generator=g)] + 0.8 * torch.randn(n, d, generator=g)


@pytest.mark.parametrize("shape", [(2000, 96), (300, 8, 3, 3)], ids=["vectors", "maps"])
def test_exact_faiss_search_returns_what_brute_force_returns(shape):
    """Issue 40: FAISS's exact index (inner product of L2-normalised float32 rows) against the matmul and topk
    that `nearest` was: the same neighbours in the same order, scores to 1e-6 (random rows: no ties)."""
    rows, queries = torch.randn(*shape), torch.randn(50, *shape[1:])
    qn, rn = torch.nn.functional.normalize(queries.flatten(1)), torch.nn.functional.normalize(rows.flatten(1))
    want_scores, want_idx = (qn @ rn.T).topk(10, dim=1)
    scores, idx = I.nearest(queries, rows, k=10)
    assert idx.dtype == torch.int64 and scores.dtype == torch.float32
    assert torch.equal(idx, want_idx) and torch.allclose(scores, want_scores, atol=1e-6, rtol=0)
    scores, idx = I.nearest(queries[:2], rows[:7], k=10)  # k past the rows: all of them, best first
    assert idx.shape == (2, 7) and torch.equal(idx, (qn[:2] @ rn[:7].T).topk(7, dim=1).indices)


def test_approximate_search_finds_nine_of_ten_nearest_on_clustered_rows(monkeypatch):
    """With the threshold lowered, auto picks the IVF index; its recall@10 against the exact index, on queries
    drawn like the rows but not among them, is at least 0.9."""
    import faiss

    rows = _clustered(4100, 256, clusters=40, seed=0)
    queries = _clustered(4200, 256, clusters=40, seed=0)[4100:]  # the same centres, rows not indexed
    assert I.search_kind("auto", 4100) == "exact"
    monkeypatch.setattr(I, "APPROX_ABOVE", 4000)
    assert I.search_kind("auto", 4000) == "exact" and I.search_kind("auto", 4001) == "approx"
    approx = I.search_index(rows, "auto")
    assert isinstance(approx, faiss.IndexIVFFlat) and approx.nlist == I.ivf_lists(4100)[0] == 105
    _, found = I.neighbours(approx, queries, k=10)
    _, truth = I.nearest(queries, rows, k=10)
    recall = sum(len(set(f) & set(t)) for f, t in zip(found.tolist(), truth.tolist())) / truth.numel()
    assert recall >= 0.9, recall
    with pytest.raises(resnets.ResnetsError, match="search is one of auto, exact, approx"):
        I.search_kind("fast", 10)


def test_the_approximate_index_is_cached_by_hash_and_read_only_when_its_sha256_matches(tmp_path, monkeypatch):
    """Built once into $RESNETS_HOME/faiss, named by the embedding file's sha256; read back only when its bytes
    match the sha256 written beside it (faiss.read_index is not safe on other bytes), else built again."""
    import faiss

    monkeypatch.setenv("RESNETS_HOME", str(tmp_path / "home"))
    rows = _clustered(500, 32, clusters=5, seed=1)
    I.save_index(tmp_path / "idx.safetensors", rows, [f"{i}.jpg" for i in range(500)], weights="w", layer=None)
    said: list[str] = []
    first = I.index_for(tmp_path / "idx.safetensors", rows, "approx", said=said.append)
    (cached,) = (tmp_path / "home" / "faiss").glob("*.faiss")
    assert len(said) == 1 and str(cached) in said[0] and cached.with_suffix(".sha256").is_file()
    reads = []
    real_read = faiss.read_index
    monkeypatch.setattr(faiss, "read_index", lambda p: reads.append(p) or real_read(p))
    again = I.index_for(tmp_path / "idx.safetensors", rows, "approx", said=said.append)
    assert len(said) == 1 and reads == [str(cached)]  # read, not built
    assert torch.equal(I.neighbours(first, rows[:5], 3)[1], I.neighbours(again, rows[:5], 3)[1])
    cached.write_bytes(b"not what we wrote" + cached.read_bytes())
    I.index_for(tmp_path / "idx.safetensors", rows, "approx", said=said.append)
    assert len(said) == 2 and reads == [str(cached)]  # never handed to FAISS: built again and rewritten
    I.save_index(tmp_path / "idx.safetensors", rows[:400], [f"{i}.jpg" for i in range(400)], weights="w", layer=None)
    I.index_for(tmp_path / "idx.safetensors", rows[:400], "approx", said=said.append)
    assert len(said) == 3  # other bytes, another cache entry


def test_predict_answers_every_input_once_and_non_finite_scores_as_errors(tmp_path):
    """One result per input in order, a file given twice (or a folder and one of its files) answered twice (an
    unreadable one given twice kept only its last place); a model whose scores are NaN answers that image's error,
    as the ONNX Runtime path does (its NaN probabilities were not even valid JSON)."""
    from PIL import Image

    import resnets

    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "a.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    model = resnets.create_model("resnet8", num_classes=3).eval()
    files = [str(tmp_path / n) for n in ("bad.png", "bad.png", "a.png")]
    got = resnets.predict(model, files)
    assert [(r["input"], r["path"], "error" in r) for r in got] == [
        (0, files[0], True),
        (1, files[1], True),
        (2, files[2], False),
    ]
    with torch.no_grad():
        model.fc.bias.fill_(float("nan"))
    for answer in (resnets.predict(model, [files[2]]), resnets.predict(model, [torch.rand(3, 32, 32)])):
        assert "not finite" in answer[0]["error"] and "top" not in answer[0]


def test_predict_of_nothing_or_an_empty_image_is_one_error():
    """An empty image (0 pixels wide) and no images at all are one ResnetsError naming them (a ZeroDivisionError
    from the resize; 'no images (...) in ' naming nothing)."""
    from PIL import Image

    import resnets
    from resnets.errors import ResnetsError

    model = resnets.create_model("resnet8", num_classes=3).eval()
    with pytest.raises(ResnetsError, match="input 0 is an empty image"):
        resnets.predict(model, Image.new("RGB", (0, 5)))
    for nothing in ([], torch.zeros(0, 3, 8, 8)):
        with pytest.raises(ResnetsError, match="predict was given no images"):
            resnets.predict(model, nothing)
