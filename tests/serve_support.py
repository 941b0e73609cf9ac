"""Shared by the serve tests (and benchmarks/bench_slow_clients.py, fuzz_service.py): a tiny random-weight run pair,
a synthetic 4-view DICOM exam, a ready TestClient, a live uvicorn server in a thread, `mammokit serve` as a process."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from predict_support import make_tiny_runs

SERVE_HW = (128, 96)  # model input; the synthetic exam is 256 x 192 (above the default 128-px minimum)


def make_runs(root: Path, seed: int = 0) -> Path:
    """A whole-image run (+ its patch run for patch heatmaps) with random weights, as training writes them."""
    whole, _ = make_tiny_runs(root, SERVE_HW, seed=seed)
    return whole


def make_exam(root: Path) -> list[Path]:
    """One synthetic woman in the INbreast layout: four FFDM DICOMs (L/R x CC/MLO) with laterality and view tags."""
    from mammokit.synth import SynthConfig, generate

    generate(root, SynthConfig(layout="inbreast", women=1, seed=3, height=256, width=192))
    return sorted((root / "AllDICOMs").glob("*.dcm"))


def wait_ready(client, timeout_s: float = 600.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = client.get("/readyz")
        if response.status_code == 200:
            return
        assert "failed" not in response.json()["detail"], response.json()
        time.sleep(0.05)
    raise AssertionError("the models did not load in time")


def multipart(paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]


class LiveServer:
    """The app behind a real uvicorn server on 127.0.0.1 (a free port), in a thread: real sockets, real HTTP.

    TestClient calls the app in-process and cannot show what a slow or broken connection does; this can.
    """

    def __init__(self, app) -> None:  # type: ignore[no-untyped-def]
        import uvicorn

        self.app = app
        config = uvicorn.Config(app, host="127.0.0.1", port=0, access_log=False, log_config=None, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="live-uvicorn", daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not (self.server.started and self.server.servers):
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve_process(args: list[str], log_path: Path, env: dict[str, str] | None = None, ready_s: float = 600.0):
    """`mammokit serve ARGS --port P` as a child process (stderr+stdout to `log_path`); yields (process, url).

    The real service as a user starts it: its own interpreter, uvicorn, logging configured by the CLI.
    """
    import httpx

    port = free_port()
    code = "import sys; from mammokit.cli import main; sys.exit(main(sys.argv[1:]))"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, "serve", *args, "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"serve exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            try:
                if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"serve not ready after {ready_s} s: {log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
