"""`mammokit serve` against hostile clients (issue 25): slow bodies, one client filling the queue, cut-off bodies,
content sniffing; and what the service must not do: log header values or file names, write into a run folder.

The slow-client tests use a real uvicorn server and raw sockets (the in-process TestClient cannot trickle a body);
the log and read-only-run tests start `mammokit serve` / `mammokit predict` as the user would, as processes.
"""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")

import httpx
from fastapi.testclient import TestClient

from dicom_factory import make_dataset, phantom, write_dicom
from mammokit.serve.app import create_app
from mammokit.serve.models import ServedModels
from mammokit.serve.settings import ServeConfig
from serve_support import LiveServer, make_exam, make_runs, multipart, serve_process, wait_ready

BOUNDARY = "mammokit-test-boundary"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return make_runs(tmp_path_factory.mktemp("serve-hardening-runs"))


@pytest.fixture(scope="module")
def exam(tmp_path_factory) -> list[Path]:
    return make_exam(tmp_path_factory.mktemp("serve-hardening-exam"))


@pytest.fixture(scope="module")
def models(runs) -> ServedModels:
    return ServedModels.load([str(runs)], device="cpu", backend="torch")


def _body(path: Path) -> bytes:
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="a.dcm"\r\n'
            "Content-Type: application/dicom\r\n\r\n"
        ).encode()
        + path.read_bytes()
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def _open_upload(port: int, source: str, content_length: int) -> socket.socket:
    """A connection from `source` (any 127.x address is this machine) that has sent a POST's headers only."""
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        (
            f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}"
            f"\r\nContent-Length: {content_length}\r\n\r\n"
        ).encode()
    )
    return sock


def _trickle(sock: socket.socket, body: bytes, every_s: float, stop: threading.Event) -> None:
    """Send `body` one byte per `every_s` seconds until the server hangs up (or `stop`)."""
    for i in range(len(body)):
        if stop.wait(every_s):
            return
        try:
            sock.sendall(body[i : i + 1])
        except OSError:  # the server closed the connection: what it should do
            return


def _read_response(sock: socket.socket, timeout_s: float) -> tuple[int, bytes, bool]:
    """(status, raw response, connection closed by the server) within `timeout_s`."""
    sock.settimeout(timeout_s)
    raw = b""
    closed = False
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                closed = True
                break
            raw += chunk
    except TimeoutError:
        pass
    except OSError:
        closed = True
    status = int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/") else 0
    return status, raw, closed


def test_trickled_bodies_hold_no_job_slot_are_cut_off_with_408_and_one_client_gets_at_most_its_share(models, exam):
    """On a queue of 2: two connections from one address and two more from two other addresses trickle a body
    (10 bytes/s). The second from the one address is refused at once (429, per-client limit); the others hold no
    job slot (a body is admitted, not queued), so an upload from yet another address is served meanwhile; each
    trickle is cut off after the body timeout (408, connection closed). Before the fix each trickle held a job slot
    until its body was complete (never, at 1 byte/s), and the good upload got 503."""
    cfg = ServeConfig(queue=2, workers=1, per_client=1, body_timeout_s=2.0, body_min_rate_kbs=100.0, timeout_s=600)
    app = create_app(config=cfg, models=models)
    body = _body(exam[0])
    stop = threading.Event()
    with LiveServer(app) as server:
        queue, gate = app.state.serve["queue"], app.state.serve["gate"]
        slow = [_open_upload(server.port, source, len(body)) for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4")]
        started = time.monotonic()
        tricklers = [threading.Thread(target=_trickle, args=(s, body, 0.1, stop), daemon=True) for s in slow]
        for t in tricklers:
            t.start()
        deadline = time.monotonic() + 10
        while gate.in_progress < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert gate.in_progress == 3 and queue.in_use == 0  # admitted, receiving; no job slot held
        second = _open_upload(server.port, "127.0.0.2", len(body))
        second_status, second_raw, _ = _read_response(second, 10)
        assert second_status == 429, second_raw[:300]
        assert b"retry-after" in second_raw.lower() and b"--per-client" in second_raw
        good = httpx.post(server.url + "/v1/predict", files=multipart(exam[:1]), data={"heatmap": "none"}, timeout=600)
        assert good.status_code == 200, good.text
        answers = [_read_response(s, 30) for s in slow]
        took = time.monotonic() - started
        stop.set()
        for t in tricklers:
            t.join(5)
        for s in [*slow, second]:
            s.close()
        for status, raw, closed in answers:
            assert status == 408, raw[:300]
            assert b"arrived too slowly" in raw and b"faster connection" in raw
            assert closed  # the connection is closed: the rest of the body is not waited for
        assert took < 15, f"cut off after {took:.1f} s with a 2 s body timeout"
        deadline = time.monotonic() + 10
        while (gate.in_progress or queue.in_use) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert queue.in_use == 0 and gate.in_progress == 0 and gate.n_bytes == 0 and gate.held_by("127.0.0.2") == 0


def test_bodies_in_memory_stay_within_the_budget_of_queue_full_uploads(models, exam):
    """The body budget (queue x upload limit) holds while bodies arrive: a body that does not fit gets 503."""
    from mammokit.serve.work import QueueFull, UploadGate

    gate = UploadGate(max_uploads=4, per_client=4, max_bytes=1000)
    first, second = gate.enter("a"), gate.enter("b")
    first.reserve(800)
    with pytest.raises(QueueFull):
        second.reserve(300)
    first.release()
    second.reserve(300)  # the first upload's bytes are free again
    second.release()
    second.release()  # idempotent
    assert gate.in_progress == 0 and gate.n_bytes == 0


def test_a_fast_upload_is_never_cut_off_by_the_body_timeout(models, exam):
    """The deadline grows with the bytes received: a body far larger than timeout x nothing arrives in time."""
    import asyncio

    from mammokit.serve.uploads import UploadError, within_deadline

    async def chunks(n: int, every_s: float):
        for _ in range(n):
            await asyncio.sleep(every_s)
            yield b"x" * 10_000

    async def total(stream) -> int:
        return sum([len(c) async for c in stream])

    # 30 chunks of 10 kB at 0.01 s: 0.3 s in all, beyond a 0.05 s base timeout but at ~1 MB/s > 100 kB/s
    assert asyncio.run(total(within_deadline(chunks(30, 0.01), timeout_s=0.05, min_rate_bytes_s=100e3))) == 300_000
    with pytest.raises(UploadError) as refused:  # 10 kB per 0.3 s = 33 kB/s < 100 kB/s: cut off
        asyncio.run(total(within_deadline(chunks(30, 0.3), timeout_s=0.05, min_rate_bytes_s=100e3)))
    assert refused.value.status == 408


def test_a_multipart_body_without_its_closing_boundary_is_refused_with_400(models, exam):
    with TestClient(create_app(config=ServeConfig(), models=models)) as client:
        body = _body(exam[0])
        cut = body[: -len(f"--{BOUNDARY}--\r\n")]  # the file part ends, the closing boundary never comes
        headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
        response = client.post("/v1/predict", content=cut, headers=headers)
        assert response.status_code == 400, response.text
        assert "closing boundary" in response.json()["detail"] and "send it again" in response.json()["detail"]
        half = body[: len(body) // 2]  # cut inside the file's data
        assert client.post("/v1/predict", content=half, headers=headers).status_code == 400
        whole = client.post("/v1/predict", content=body, headers=headers, params={})
        assert whole.status_code == 200, whole.text  # the same body, complete, is served


def test_every_response_says_nosniff(models, exam, monkeypatch):
    app = create_app(config=ServeConfig(token="tok"), models=models)
    auth = {"Authorization": "Bearer tok"}
    with TestClient(app, raise_server_exceptions=False) as client:
        ok = client.post("/v1/predict", files=multipart(exam[:1]), headers=auth, data={"heatmap": "gradcam"})
        assert ok.status_code == 200
        responses = {
            "viewer": client.get("/"),
            "healthz": client.get("/healthz"),
            "readyz": client.get("/readyz"),
            "model": client.get("/v1/model", headers=auth),
            "openapi": client.get("/openapi.json"),
            "docs": client.get("/docs"),
            "static file": client.get("/docs-assets/swagger-ui.css"),
            "result png": client.get(ok.json()["views"][0]["image_url"], headers=auth),
            "401": client.get("/v1/model"),
            "404 route": client.get("/no/such/route"),
            "404 result": client.get("/v1/results/nope/views/0/image.png", headers=auth),
            "405": client.put("/v1/predict", headers=auth),
            "415": client.post("/v1/predict", content=b"x", headers={**auth, "Content-Type": "text/plain"}),
            "422 path parameter": client.get("/v1/results/x/views/notanint/image.png", headers=auth),
        }
        monkeypatch.setattr(app.state.serve["store"], "get", lambda *a: 1 / 0)  # a bug: unhandled exception
        responses["500"] = client.get("/v1/results/x/views/0/image.png", headers=auth)
    statuses = {name: r.status_code for name, r in responses.items()}
    assert statuses["static file"] == 200 and statuses["500"] == 500 and statuses["405"] == 405, statuses
    missing = [name for name, r in responses.items() if r.headers.get("x-content-type-options") != "nosniff"]
    assert missing == [], statuses
    assert "ZeroDivisionError" in responses["500"].json()["detail"]


# --------------------------------------------------------------------------------------------- logs and run folders

SECRETS = ("SMITH", "JOHN", "19700101", "Jane", "DOE")


def _identifying_files(folder: Path) -> list[Path]:
    """DICOMs whose malformed elements and names carry identifying strings, and a good one with a hostile name."""
    folder.mkdir(parents=True, exist_ok=True)
    pixels = phantom((256, 192), side="L")
    out = []
    # NumberOfFrames (IS) holding a name: pydicom warns 'Invalid value for VR IS: ...' with the value
    ds = make_dataset(pixels, patient_id="SMITH-19700101")
    ds.PatientName, ds.NumberOfFrames = "SMITH^JOHN", "1234567890"
    path = write_dicom(folder / "SMITH^JOHN_19700101_frames.dcm", ds)
    path.write_bytes(path.read_bytes().replace(b"1234567890", b"SMITH^JOHN"))
    out.append(path)
    # a spacing (DS) that is a name
    ds = make_dataset(pixels, patient_id="DOE-JANE", pixel_spacing=(0.1, 0.1))
    ds.PatientName = "DOE^JANE"
    path = write_dicom(folder / "Jane_DOE_spacing.dcm", ds)
    path.write_bytes(path.read_bytes().replace(b"0.1\\0.1 ", b"DOE^JANE"))
    out.append(path)
    # a readable file whose name and header identify the patient (it is predicted: nothing of it may be logged)
    ds = make_dataset(phantom((256, 192), side="R"), patient_id="SMITH-JOHN-ID", image_laterality="R")
    ds.PatientName, ds.PatientBirthDate = "SMITH^JOHN", "19700101"
    out.append(write_dicom(folder / "SMITH_JOHN_19700101_R_CC.dcm", ds))
    return out


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_serve_logs_no_header_value_or_file_name_and_writes_nothing_into_a_read_only_run(runs, tmp_path):
    """`mammokit serve` as a process (the CLI's logging, pydicom imported late as in production), backend auto (so
    the ONNX export and the backend choice are made), the run folder read-only: uploads with identifying values in
    malformed elements and in file names; then every byte the service logged is searched for them."""
    import os
    import shutil

    run = Path(shutil.copytree(runs, tmp_path / "run"))
    patch = Path(shutil.copytree(runs.parent / "patch", tmp_path / "patch"))  # for patch heatmaps
    files = _identifying_files(tmp_path / "files")
    before = [_snapshot(run), _snapshot(patch)]
    subprocess.run(
        ["chmod", "-R", "a-w", str(run), str(patch)], check=True
    )  # root ignores it: the snapshot is the check
    cache = tmp_path / "cache"
    log_path = tmp_path / "serve.log"
    try:
        with serve_process([str(run), "--cache-dir", str(cache), "--heatmap", "gradcam"], log_path) as (_proc, url):
            statuses = []
            for path in files:
                hostile = f"../../{path.name}\x1b[31m<script>"  # a path and control characters in the name
                upload = [("files", (hostile, path.read_bytes(), "application/dicom"))]
                statuses.append(httpx.post(url + "/v1/predict", files=upload, timeout=600).status_code)
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(run), str(patch)], check=True)
    assert statuses == [422, 200, 200], statuses  # a spacing that does not parse is no spacing (fixed-size model)
    text = log_path.read_text(errors="replace")
    assert "status=200" in text and "status=422" in text  # the requests were logged...
    leaked = [s for s in SECRETS if s.lower() in text.lower()]
    assert leaked == [], f"{leaked} in the service log:\n{text[-3000:]}"  # ...without a header value or name
    assert "pydicom" not in text
    assert [_snapshot(run), _snapshot(patch)] == before  # nothing written, touched or removed in the run folder
    (entry,) = (cache / "runs").iterdir()
    assert {"backend.json", "model.onnx"} <= set(os.listdir(entry))


def test_predict_logs_no_header_value_or_file_name(runs, tmp_path):
    files = _identifying_files(tmp_path / "SMITH_JOHN_inputs")
    out = tmp_path / "out"
    code = "import sys; from mammokit.cli import main; sys.exit(main(sys.argv[1:]))"
    args = [sys.executable, "-c", code, "predict", str(runs), *map(str, files), "--out", str(out), "--backend",
            "torch", "--device", "cpu", "--heatmap", "gradcam", "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr  # one unreadable file
    assert "2 image(s) predicted, 1 failed" in result.stderr
    assert "img/s" not in result.stderr  # stderr is a pipe here: no progress bar, as in a CI log
    logs = result.stdout + result.stderr + "".join(p.read_text() for p in out.rglob("*.log"))
    leaked = [s for s in SECRETS if s.lower() in logs.lower()]
    assert leaked == [], f"{leaked} in predict's log:\n{logs[-3000:]}"
    assert "SMITH^JOHN" in (out / "errors.csv").read_text()  # the reason is the user's, in the output, not the log


def test_a_png_named_like_html_is_served_back_as_png(models):
    """A result PNG is always image/png with nosniff, whatever the upload was called."""
    png = io.BytesIO()
    Image.fromarray(phantom((256, 192), bits=8, side="R").astype(np.uint8)).save(png, format="PNG")
    with TestClient(create_app(config=ServeConfig(), models=models)) as client:
        wait_ready(client)
        body = client.post(
            "/v1/predict", files=[("files", ("<img src=x onerror=alert(1)>.html", png.getvalue(), "text/html"))]
        ).json()
        image = client.get(body["views"][0]["image_url"])
    assert image.headers["content-type"] == "image/png" and image.headers["x-content-type-options"] == "nosniff"


# --------------------------------------------------------------------------------------------- isolated decoding


def test_a_decoder_crash_or_runaway_allocation_costs_that_upload_only(models, exam):
    """Uploads decode in memory-capped worker processes: one that aborts its decoder (twice: it is retried once on a
    fresh pool) and one that asks for 8 GB get 422 that say so, and the service goes on predicting."""
    from crash_support import ALLOCATE_MARKER, CRASH_MARKER, read_or_misbehave
    from mammokit.serve.decode import DecodePool

    png = io.BytesIO()
    Image.fromarray(phantom((256, 192), bits=8, side="R").astype(np.uint8)).save(png, format="PNG")
    app = create_app(config=ServeConfig(), models=models)
    with TestClient(app) as client:
        app.state.serve["decoder"].shutdown()
        pool = DecodePool(1, memory_mb=1024, read_fn=read_or_misbehave)
        app.state.serve["decoder"] = pool
        try:
            crash = client.post("/v1/predict", files=[("files", ("c.png", png.getvalue() + CRASH_MARKER, "image/png"))])
            big = client.post("/v1/predict", files=[("files", ("m.png", png.getvalue() + ALLOCATE_MARKER, "x"))])
            good = client.post("/v1/predict", files=multipart(exam[:1]), data={"heatmap": "none"})
        finally:
            pool.shutdown()
    assert crash.status_code == 422 and "decoder crashed" in crash.json()["detail"], crash.text
    assert pool.crashes == 2  # the upload was tried once more on a fresh pool: a second death is its own
    assert big.status_code == 422 and "more memory than this server allows" in big.json()["detail"], big.text
    assert good.status_code == 200, good.text
