"""`mammokit serve`: the HTTP API on a tiny random-weight run and a synthetic DICOM exam (FastAPI TestClient)."""

from __future__ import annotations

import io
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")

from fastapi.testclient import TestClient

from dicom_factory import make_dataset, phantom, write_dicom
from mammokit.serve.app import create_app
from mammokit.serve.settings import ServeConfig
from serve_support import make_exam, make_runs, multipart, wait_ready

MAX_FILE_MB = 1.0  # small, so that the oversize test needs only ~1 MB


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return make_runs(tmp_path_factory.mktemp("serve-runs"))


@pytest.fixture(scope="module")
def exam(tmp_path_factory) -> list[Path]:
    return make_exam(tmp_path_factory.mktemp("serve-exam"))


@pytest.fixture(scope="module")
def client(runs):
    # a generous timeout: on a starved shared CPU one exam can take over a minute
    app = create_app([str(runs)], ServeConfig(max_file_mb=MAX_FILE_MB, queue=4, workers=2, timeout_s=900))
    with TestClient(app) as c:
        wait_ready(c)
        yield c


def _dicom_bytes(tmp_path: Path, name: str = "x.dcm", syntax: str | None = None, **kwargs) -> bytes:
    pixels = kwargs.pop("pixels", None)
    if pixels is None:
        pixels = phantom((256, 192), side=kwargs.get("image_laterality") or "L")
    return write_dicom(tmp_path / name, make_dataset(pixels, **kwargs), syntax).read_bytes()


# ----------------------------------------------------------------------------------------------- good requests


def test_exam_gives_views_breasts_exam_and_heatmaps_matching_predict(client, runs, exam):
    from mammokit.infer.predictor import Predictor

    response = client.post("/v1/predict", files=multipart(exam), data={"heatmap": "gradcam"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert response.headers["X-Request-ID"] == body["request_id"]
    sides_views = [(v["laterality"], v["view"]) for v in body["views"]]
    assert sides_views == [("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")]
    predictor = Predictor.from_run(runs, "cpu")
    for path, view in zip(exam, body["views"], strict=True):
        expected = predictor.predict(path)  # the same file through `mammokit predict`'s Predictor, from disk
        assert view["prob_malignant"] == pytest.approx(expected.prob_malignant, abs=1e-5)
        assert view["call"] == expected.call == int(view["prob_uncalibrated"] >= view["threshold"])
        assert view["spacing_mm"] == [0.07, 0.07] and view["photometric"] == "MONOCHROME2"
        assert view["fit_scale"] == 1.0  # fixed-size model: nothing shrunk to fit a canvas
        assert "patient_id" not in str(view).lower() and "SIEMENS" not in str(view)  # no other header fields
    by_side = {b["laterality"]: b for b in body["breasts"]}
    for side in ("L", "R"):  # breast = mean over its views (evaluate's default), exam = max over breasts
        probs = [v["prob_malignant"] for v in body["views"] if v["laterality"] == side]
        assert by_side[side]["prob_malignant"] == pytest.approx(np.mean(probs), abs=1e-5)
        assert by_side[side]["n_views"] == 2
    assert body["exam"]["prob_malignant"] == pytest.approx(max(b["prob_malignant"] for b in body["breasts"]))
    assert body["exam"]["call"] == int(body["exam"]["prob_malignant"] >= body["threshold_calibrated"])
    assert body["models"][0]["name"] == runs.name and body["models"][0]["mammokit_version"]

    heat = client.get(body["views"][0]["heatmaps"]["gradcam"])
    image = client.get(body["views"][0]["image_url"])
    assert heat.status_code == image.status_code == 200 and heat.headers["content-type"] == "image/png"
    heat_png, view_png = Image.open(io.BytesIO(heat.content)), Image.open(io.BytesIO(image.content))
    assert heat_png.mode == "LA" and view_png.mode == "L" and heat_png.size == view_png.size == (192, 256)
    level = np.asarray(heat_png)[..., 0]
    assert level.max() > 200 and level.min() < 60  # Grad-CAM is min-max normalised per image
    assert client.get(body["views"][0]["image_url"].replace(body["result_id"], "nope")).status_code == 404


def test_single_png_view_with_form_fields_and_inline_images(client, tmp_path):
    png = io.BytesIO()
    Image.fromarray((phantom((256, 192), bits=8, side="R")).astype(np.uint8)).save(png, format="PNG")
    response = client.post(
        "/v1/predict",
        files=[("files", ("scan.png", png.getvalue(), "image/png"))],
        data={"laterality": "R", "view": "MLO", "heatmap": "none", "inline": "true"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    (view,) = body["views"]
    assert (view["laterality"], view["view"], view["format"]) == ("R", "MLO", "png")
    assert view["laterality_source"] == view["view_source"] == "form"
    assert view["heatmaps"] == {} and view["image_url"].startswith("data:image/png;base64,")
    assert body["result_id"] is None  # inline: nothing kept on the server
    assert [b["laterality"] for b in body["breasts"]] == ["R"]
    assert body["exam"]["prob_malignant"] == pytest.approx(view["prob_malignant"])


def _png(side: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray((phantom((256, 192), bits=8, side=side)).astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


def test_a_side_no_file_records_is_guessed_from_the_image_marked_and_counted(client):
    """Two PNGs of one woman without laterality (a mini-MIAS exam as a viewer user has it): the sides are guessed
    from the chest wall, marked as guesses in the response, and both breasts get a result."""
    files = [("files", ("a.png", _png("R"), "image/png")), ("files", ("b.png", _png("L"), "image/png"))]
    body = client.post("/v1/predict", files=files, data={"view": ["MLO", "MLO"], "heatmap": "none"}).json()
    assert [(v["laterality"], v["laterality_source"]) for v in body["views"]] == [("R", "guess"), ("L", "guess")]
    assert sorted(b["laterality"] for b in body["breasts"]) == ["L", "R"] and body["exam"] is not None
    assert any("guessed from the image" in n for n in body["notes"])
    # the user's correction (the viewer's select, sent as the laterality form field) replaces the guess
    body = client.post("/v1/predict", files=files, data={"laterality": ["R", ""], "view": ["MLO", "MLO"],
                                                         "heatmap": "none"}).json()  # fmt: skip
    assert [(v["laterality"], v["laterality_source"]) for v in body["views"]] == [("R", "form"), ("L", "guess")]
    body = client.post("/v1/predict", files=files, data={"laterality": ["L", "R"], "view": ["MLO", "MLO"],
                                                         "heatmap": "none"}).json()  # fmt: skip
    assert [(v["laterality"], v["laterality_source"]) for v in body["views"]] == [("L", "form"), ("R", "form")]
    assert not any("guessed" in n for n in body["notes"])
    # two same-view films guessed to one side: the guess, not the exam, is wrong; left unknown, never a 422
    same = [("files", ("a.png", _png("R"), "image/png")), ("files", ("c.png", _png("R"), "image/png"))]
    response = client.post("/v1/predict", files=same, data={"view": ["MLO", "MLO"], "heatmap": "none"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [v["laterality"] for v in body["views"]] == [None, None] and body["breasts"] == []
    assert any("left unknown" in n for n in body["notes"])


def test_a_deflate_bomb_upload_is_refused_within_bounded_memory_and_the_next_exam_is_served(client, exam, tmp_path):
    import tracemalloc

    from dicom_factory import write_deflate_bomb

    bomb = write_deflate_bomb(tmp_path / "bomb.dcm", 400_000_000)  # ~400 KB that inflates to 400 MB
    assert bomb.stat().st_size < 1_000_000
    tracemalloc.start()
    try:
        response = client.post("/v1/predict", files=[("files", ("bomb.dcm", bomb.read_bytes(), "application/dicom"))],
                               data={"heatmap": "none"})  # fmt: skip
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert response.status_code == 422, response.text
    assert peak < 100e6, f"reading the bomb's header peaked at {peak / 1e6:.0f} MB"  # far below its 400 MB
    files = [("files", (p.name, p.read_bytes(), "application/dicom")) for p in exam]
    assert client.post("/v1/predict", files=files, data={"heatmap": "none"}).status_code == 200


def test_model_health_and_ready(client, runs):
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/readyz").json() == {"status": "ready", "models": [runs.name]}
    info = client.get("/v1/model").json()
    model = info["models"][0]
    assert model["card"]["task"] == "whole" and model["heatmap_backend"] == "torch"
    # the default backend is auto: the one measured fastest within the bar on this machine, with its timings
    assert model["backend"] == model["backend_selection"]["backend"] in ("torch", "onnx", "openvino", "torch-bf16")
    assert all(t["ms_per_image"] > 0 for t in model["backend_selection"]["trials"] if t["accepted"])
    assert {"none", "gradcam", "patch", "both"} <= set(info["heatmap_kinds"])
    assert info["limits"]["max_views"] == 4
    assert "/v1/predict" in client.get("/openapi.json").json()["paths"]
    page = client.get("/")
    assert page.status_code == 200 and "mammokit viewer" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # self-contained: no CDN


def test_api_docs_page_is_served_offline(client):
    """/docs works without internet: Swagger UI's script and style come from this server, not a CDN."""
    page = client.get("/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text
    assert "http://" not in page.text and "https://" not in page.text
    for asset in ("/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css"):
        assert asset in page.text
        got = client.get(asset)
        assert got.status_code == 200 and len(got.content) > 10_000, asset
    assert client.get("/redoc").status_code == 404  # FastAPI's ReDoc page would load a CDN script


def test_ensemble_averages_the_runs_as_evaluate_does(runs, exam, tmp_path, monkeypatch):
    from mammokit.infer.preprocessor import Preprocessor

    second = make_runs(tmp_path, seed=1)
    prepared = []
    real_prepare = Preprocessor.prepare

    def counting_prepare(self, item, *args, **kwargs):
        prepared.append(item.image_id)
        return real_prepare(self, item, *args, **kwargs)

    monkeypatch.setattr(Preprocessor, "prepare", counting_prepare)
    with TestClient(create_app([str(runs), str(second)], ServeConfig())) as c:
        wait_ready(c)
        body = c.post("/v1/predict", files=multipart(exam[:2]), data={"heatmap": "none"}).json()
    assert sorted(prepared) == ["view1", "view2"]  # both runs prepare alike: each view is prepared once
    assert body["ensemble"] is True and len(body["models"]) == 2
    for view in body["views"]:
        members = [m["prob_malignant"] for m in view["models"]]
        assert len(set(members)) == 2  # different weights, different probabilities
        assert view["prob_malignant"] == pytest.approx(np.mean(members), abs=2e-6)
        assert view["call"] is None  # an ensemble has no stored threshold (as in evaluate)
    assert body["breasts"][0]["call"] is None and body["notes"]


# ----------------------------------------------------------------------------------------------- bad uploads


def _bad_uploads(tmp_path: Path, exam: list[Path]) -> dict[str, tuple[list, int, str]]:
    """name -> (multipart files, expected status, a phrase the message must contain)."""
    from pydicom.encaps import encapsulate

    good = exam[0].read_bytes()
    ds = make_dataset(phantom((256, 192)))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video: no decoder exists for it
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    huge = make_dataset(phantom((256, 192)))
    huge.Rows, huge.Columns = 60000, 60000  # 3.6 gigapixels declared over 98 kB of data
    forged = make_dataset(phantom((256, 192)))
    forged.Rows, forged.Columns = 4000, 3000  # native: 24 MB declared, 98 kB present
    bufs = {}
    for key, d in (("huge", huge), ("forged", forged)):
        bufs[key] = io.BytesIO()
        d.save_as(bufs[key], enforce_file_format=True)
    rle = _dicom_bytes(tmp_path, "rle.dcm", syntax="rle")

    def one(name: str, data: bytes) -> list:
        return [("files", (name, data, "application/octet-stream"))]

    return {
        "empty file": (one("empty.dcm", b""), 422, "empty file"),
        "truncated DICOM": (one("cut.dcm", good[: len(good) // 2]), 422, "truncated"),
        "truncated compressed DICOM": (one("cut-rle.dcm", rle[: len(rle) * 2 // 3]), 422, "truncated"),
        "non-image file": (one("report.dcm", b"%PDF-1.7 this is not an image at all" * 10), 422, "not a DICOM"),
        "non-mammography modality": (one("ct.dcm", _dicom_bytes(tmp_path, "ct.dcm", modality="CT")), 422, "'CT'"),
        "multi-frame": (
            one("tomo.dcm", _dicom_bytes(tmp_path, "mf.dcm", pixels=np.stack([phantom((256, 192))] * 2), frames=2)),
            422,
            "multi-frame",
        ),
        "oversize file": (one("big.png", b"\x89PNG\r\n\x1a\n" + b"\0" * int(MAX_FILE_MB * 1e6 + 10)), 413, "larger"),
        "more than 4 views": (multipart(exam) + one("fifth.dcm", good), 422, "more than 4 files"),
        "same view twice": (one("a.dcm", good) + one("b.dcm", good), 422, "second L CC view"),
        "unsupported transfer syntax": (one("mpeg.dcm", buf.getvalue()), 422, "not supported"),
        "image too small": (
            one("tiny.dcm", _dicom_bytes(tmp_path, "t.dcm", pixels=phantom((64, 48)))),
            422,
            "too small",
        ),
        "declared size over the limit": (one("huge.dcm", bufs["huge"].getvalue()), 413, "limit"),
        "declared size larger than the data": (one("forged.dcm", bufs["forged"].getvalue()), 422, "header declares"),
    }


def test_every_bad_upload_gets_a_4xx_that_says_why_and_the_server_goes_on(client, exam, tmp_path):
    for name, (files, status, phrase) in _bad_uploads(tmp_path, exam).items():
        response = client.post("/v1/predict", files=files, data={"heatmap": "none"})
        assert response.status_code == status, f"{name}: {response.status_code} {response.text}"
        detail = response.json()["detail"]
        assert phrase in detail, f"{name}: {detail!r} does not say {phrase!r}"
    only_text = b'--XyZ\r\nContent-Disposition: form-data; name="heatmap"\r\n\r\nnone\r\n--XyZ--\r\n'
    missing = client.post(
        "/v1/predict", content=only_text, headers={"content-type": "multipart/form-data; boundary=XyZ"}
    )
    assert missing.status_code == 422 and "no file uploaded" in missing.json()["detail"]
    not_multipart = client.post("/v1/predict", content=b"{}", headers={"content-type": "application/json"})
    assert not_multipart.status_code == 415 and "multipart" in not_multipart.json()["detail"]
    unknown = client.post("/v1/predict", files=multipart(exam[:1]), data={"colour": "red"})
    assert unknown.status_code == 422 and "unknown form field 'colour'" in unknown.json()["detail"]
    # still serving, and every slot was given back
    assert client.post("/v1/predict", files=multipart(exam[:1]), data={"heatmap": "none"}).status_code == 200
    assert client.app.state.serve["queue"].in_use == 0


def test_conflicting_form_laterality_is_refused(client, exam):
    response = client.post("/v1/predict", files=multipart(exam[:1]), data={"laterality": "R", "heatmap": "none"})
    assert response.status_code == 422 and "the file says L" in response.json()["detail"]


def test_logs_carry_request_id_and_sizes_never_names_or_header_fields(client, tmp_path, caplog):
    data = _dicom_bytes(tmp_path, "p.dcm", patient_id="SECRET-PATIENT-42")
    with caplog.at_level(logging.INFO, logger="mammokit.serve"):
        named = [("files", ("Jane_Doe_LEFT_CC.dcm", data, "x"))]
        ok = client.post("/v1/predict", files=named, data={"heatmap": "none"})
        bad = client.post("/v1/predict", files=[("files", ("Jane_Doe_2.dcm", b"junk" * 100, "x"))])
    assert ok.status_code == 200 and bad.status_code == 422
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert f"request_id={ok.headers['X-Request-ID']}" in text and f"upload_bytes={len(data)}" in text
    assert "Jane" not in text and "SECRET" not in text and "junk" not in text


# ----------------------------------------------------------------------------------------------- queue, timeout, token


def _blocking(models, gate: threading.Event):
    """Wrap `predict_exam` so that jobs wait for `gate` (to hold the queue full deterministically)."""
    original = models.predict_exam

    def wait_then_predict(*args, **kwargs):
        gate.wait(30)
        return original(*args, **kwargs)

    return wait_then_predict


def test_full_queue_answers_503_with_retry_after(client, exam, monkeypatch):
    models = client.app.state.serve["models"]
    gate = threading.Event()
    app = create_app(config=ServeConfig(queue=1, workers=1), models=models)
    monkeypatch.setattr(models, "predict_exam", _blocking(models, gate))
    with TestClient(app) as c:
        first: dict = {}
        worker = threading.Thread(target=lambda: first.update(r=c.post("/v1/predict", files=multipart(exam[:1]))))
        worker.start()
        deadline = time.monotonic() + 10
        while app.state.serve["queue"].in_use < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        busy = c.post("/v1/predict", files=multipart(exam[:1]))
        gate.set()
        worker.join(30)
    assert busy.status_code == 503 and int(busy.headers["Retry-After"]) >= 1 and "busy" in busy.json()["detail"]
    assert first["r"].status_code == 200


def test_request_past_the_timeout_gets_504_and_frees_its_slot_when_done(client, exam, monkeypatch):
    models = client.app.state.serve["models"]
    gate = threading.Event()
    app = create_app(config=ServeConfig(timeout_s=0.3, workers=1, queue=2), models=models)
    monkeypatch.setattr(models, "predict_exam", _blocking(models, gate))
    with TestClient(app) as c:
        response = c.post("/v1/predict", files=multipart(exam[:1]), data={"heatmap": "none"})
        queue = app.state.serve["queue"]
        assert queue.in_use == 1  # the job still runs: its slot (and memory) is not free yet
        gate.set()
        deadline = time.monotonic() + 10
        while queue.in_use and time.monotonic() < deadline:
            time.sleep(0.01)
    assert response.status_code == 504 and "0.3 s" in response.json()["detail"]
    assert queue.in_use == 0


def test_token_is_required_when_set_and_for_a_public_bind(client, exam, runs):
    from mammokit.cli import main
    from mammokit.config import ConfigError

    app = create_app(config=ServeConfig(token="s3cret-token"), models=client.app.state.serve["models"])
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200  # liveness stays open
        assert c.get("/v1/model").status_code == 401
        wrong = c.post("/v1/predict", files=multipart(exam[:1]), headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
        ok = c.get("/v1/model", headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200
    with pytest.raises(ConfigError, match="token"):
        ServeConfig(host="0.0.0.0").validate()
    ServeConfig(host="0.0.0.0", token="t").validate()
    ServeConfig(host="::1").validate()
    assert main(["serve", str(runs), "--host", "0.0.0.0"]) == 2  # refused before anything starts


@pytest.mark.slow  # the ONNX export alone takes a minute or more on 2 shared cores
def test_onnx_backend_serves_the_same_probabilities_without_heatmaps(client, runs, exam, tmp_path):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    import shutil

    from mammokit.cli import main

    run = shutil.copytree(runs, tmp_path / runs.name)
    shutil.copytree(runs.parent / "patch", tmp_path / "patch")
    assert main(["export", str(run)]) == 0
    torch_body = client.post("/v1/predict", files=multipart(exam), data={"heatmap": "none"}).json()
    config = ServeConfig(backend="onnx")
    config.validate()  # an ONNX server defaults to no heatmaps
    with TestClient(create_app([str(run)], config)) as c:
        wait_ready(c)
        assert c.get("/v1/model").json()["heatmap_kinds"] == ["none"]
        body = c.post("/v1/predict", files=multipart(exam)).json()
        refused = c.post("/v1/predict", files=multipart(exam), data={"heatmap": "gradcam"})
    assert body["models"][0]["backend"] == "onnx"
    for onnx_view, torch_view in zip(body["views"], torch_body["views"], strict=True):
        assert onnx_view["prob_malignant"] == pytest.approx(torch_view["prob_malignant"], abs=1e-4)
    assert refused.status_code == 422 and "not available" in refused.json()["detail"]


def test_nothing_is_written_to_disk_during_a_request(client, exam, monkeypatch):
    import builtins
    import tempfile

    writes: list[str] = []
    real_open = builtins.open

    def watching_open(file, mode="r", *args, **kwargs):
        if any(flag in str(mode) for flag in "wax+"):
            writes.append(f"{file} ({mode})")
        return real_open(file, mode, *args, **kwargs)

    def no_temp(*args, **kwargs):
        writes.append("tempfile")
        raise AssertionError("a temporary file was created")

    monkeypatch.setattr(builtins, "open", watching_open)
    for name in ("SpooledTemporaryFile", "NamedTemporaryFile", "TemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, no_temp)
    response = client.post("/v1/predict", files=multipart(exam), data={"heatmap": "gradcam"})
    assert response.status_code == 200, response.text
    assert client.get(response.json()["views"][0]["image_url"]).status_code == 200
    assert writes == []


def test_result_store_expires_and_evicts_the_oldest_results():
    from mammokit.serve.store import ResultStore

    store = ResultStore(ttl_s=0.2, max_bytes=100)
    first = store.put({"a.png": b"x" * 60})
    assert store.get(first, "a.png") == b"x" * 60 and store.get(first, "b.png") is None
    second = store.put({"a.png": b"y" * 60})  # 120 bytes > 100: the oldest result goes
    assert store.get(first, "a.png") is None and store.get(second, "a.png") == b"y" * 60
    assert store.n_bytes == 60 and len(store) == 1
    time.sleep(0.25)
    assert store.get(second, "a.png") is None and store.n_bytes == 0
    with pytest.raises(ValueError, match="exceeds"):
        store.put({"big.png": b"z" * 101})


def test_read_mammogram_bytes_equals_read_mammogram(exam, tmp_path):
    from mammokit.io.dicom import MammogramReadError, read_mammogram, read_mammogram_bytes

    png = tmp_path / "Case_RIGHT_MLO.png"
    Image.fromarray(phantom((256, 192), bits=8, side="R").astype(np.uint8)).save(png)
    for path in (exam[0], png):
        pixels, meta = read_mammogram(path)
        from_bytes, meta_bytes = read_mammogram_bytes(path.read_bytes(), name=str(path))
        np.testing.assert_array_equal(from_bytes, pixels)
        assert meta_bytes == meta
    with pytest.raises(MammogramReadError, match="empty file"):
        read_mammogram_bytes(b"", name="x.dcm")
    with pytest.raises(MammogramReadError, match=r"^notes\.txt: not a DICOM"):
        read_mammogram_bytes(b"plain text" * 20, name="notes.txt")
