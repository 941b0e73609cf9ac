"""The viewer in a real browser: Playwright drives the Debian `chromium` against a live `mammokit serve` (uvicorn).

Playwright's own browser download cannot work offline, so the test launches the system binary
(`make chromium` installs it) and skips with a message where it or Playwright is absent. It uploads a
synthetic four-view DICOM exam through the page's file picker and checks that the probabilities, the call
and the heatmap overlays appear, that the opacity slider and the colour scale change the overlay, and that
a rejected file gets a readable message. With MAMMOKIT_SCREENSHOT_DIR set it also saves the page there,
and MAMMOKIT_SERVE_TEST_RUN serves that run instead of a random-weight one (docs/serve-viewer.png is made
with both: the `--preset small` demo run).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")

from mammokit.serve.app import create_app  # noqa: E402
from mammokit.serve.settings import ServeConfig  # noqa: E402
from serve_support import make_exam, make_runs  # noqa: E402


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("the system Chromium is not installed (`make chromium` installs the Debian package `chromium`)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A live uvicorn server on loopback with a tiny random-weight run; yields its base URL."""
    import uvicorn

    given = os.environ.get("MAMMOKIT_SERVE_TEST_RUN")  # e.g. the demo's run, for the docs screenshot
    run = Path(given) if given else make_runs(tmp_path_factory.mktemp("browser-runs"))
    port = _free_port()
    app = create_app([str(run)], ServeConfig(port=port, timeout_s=900))
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    import httpx

    deadline = time.monotonic() + 600  # loading a model on a starved shared CPU can take minutes
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    else:
        raise AssertionError("the server did not become ready")
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(20)


def test_viewer_shows_probabilities_and_overlays_for_a_dicom_exam(server, tmp_path):
    executable = _chromium()
    exam = make_exam(tmp_path / "exam")
    console_errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
        page.set_default_timeout(120_000)
        page.goto(server + "/")
        sync_api.expect(page.locator("#model")).to_contain_text("model ")
        sync_api.expect(page.locator("#request-heatmap option")).not_to_have_count(0)
        page.select_option("#request-heatmap", "gradcam")
        with page.expect_response(lambda r: r.url.endswith("/v1/predict")) as response_info:
            page.set_input_files("#files", [str(p) for p in exam])
        result = response_info.value.json()
        overlays = page.locator('[data-testid="overlay"][data-drawn="1"]')
        sync_api.expect(overlays).to_have_count(4, timeout=120_000)

        # the numbers shown are the API's
        exam_pct = f"{100 * result['exam']['prob_malignant']:.1f}%"
        sync_api.expect(page.locator('[data-testid="exam-prob"]')).to_have_text(exam_pct)
        shown = page.locator('[data-testid="prob"] b').all_inner_texts()
        assert shown == [f"{100 * v['prob_malignant']:.1f}%" for v in result["views"]]
        assert page.locator(".view .call").count() == 4 and page.locator("#breasts tr").count() == 3
        sync_api.expect(page.locator("#kind")).to_have_value("gradcam")

        def overlay_alpha_sum() -> int:
            return page.evaluate(
                """() => { const c = document.querySelector('[data-testid="overlay"]');
                           const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                           let s = 0; for (let i = 3; i < d.length; i += 4) s += d[i]; return s; }"""
            )

        strong = overlay_alpha_sum()
        assert strong > 0  # the heatmap is drawn over the image
        page.fill("#opacity", "20")  # keyboard/pointer-free way to move a range input
        page.dispatch_event("#opacity", "input")
        sync_api.expect(page.locator("#opacity-out")).to_have_text("20%")
        weak = overlay_alpha_sum()
        assert 0 < weak < strong * 0.5
        page.select_option("#cmap", "viridis")  # colour scale switch redraws without errors

        if os.environ.get("MAMMOKIT_SCREENSHOT_DIR"):
            page.fill("#opacity", "60")
            page.dispatch_event("#opacity", "input")
            page.wait_for_timeout(200)
            out = Path(os.environ["MAMMOKIT_SCREENSHOT_DIR"]) / "serve-viewer.png"
            page.screenshot(path=str(out), full_page=True)

        # a rejected file: a clear message in the page, and the server goes on
        bad = tmp_path / "notes.dcm"
        bad.write_text("this is a text file, not an image\n" * 20)
        page.set_input_files("#files", [str(bad)])
        sync_api.expect(page.locator("#errors .error")).to_contain_text("not a DICOM, PNG, PGM or JPEG")
        # keyboard: the file picker and the display controls are reachable with Tab
        page.keyboard.press("Tab")
        focusable = set()
        for _ in range(8):
            focusable.add(page.evaluate("() => document.activeElement.id"))
            page.keyboard.press("Tab")
        assert {"files", "request-heatmap", "opacity", "cmap"} <= focusable
        browser.close()
    assert not [e for e in console_errors if "422" not in e], console_errors


def test_viewer_lets_the_user_set_a_side_the_file_does_not_record(server, tmp_path):
    """A mini-MIAS exam as two PGMs: no header says which breast. The viewer shows the server's guess, marked as
    a guess, in a select; choosing a side predicts again with it as the laterality form field."""
    import numpy as np

    from dicom_factory import phantom
    from mammokit.synth.mias import pgm_bytes

    files = []
    for name, side in (("mdb001.pgm", "R"), ("mdb002.pgm", "L")):
        (tmp_path / name).write_bytes(pgm_bytes(phantom((256, 256), bits=8, side=side).astype(np.uint8)))
        files.append(str(tmp_path / name))
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.set_default_timeout(120_000)
        page.goto(server + "/")
        sync_api.expect(page.locator("#request-heatmap option")).not_to_have_count(0)
        with page.expect_response(lambda r: r.url.endswith("/v1/predict")) as first:
            page.set_input_files("#files", files)
        assert [v["laterality_source"] for v in first.value.json()["views"]] == ["guess", "guess"]
        sides = page.locator('[data-testid="sides"] select[data-field="laterality"]')
        sync_api.expect(sides).to_have_count(2)
        assert [sides.nth(i).input_value() for i in range(2)] == ["R", "L"]
        sync_api.expect(page.locator(".view .guess")).to_have_count(2)
        sync_api.expect(page.locator("#breasts tr")).to_have_count(3)  # header + both breasts
        with page.expect_response(lambda r: r.url.endswith("/v1/predict")) as second:
            sides.nth(1).select_option("R")  # the user says the second film is the right breast too
        views = second.value.json()["views"]
        assert [(v["laterality"], v["laterality_source"]) for v in views][1] == ("R", "form")
        assert views[0]["laterality"] is None  # two right MLOs cannot both be: the guess gives way
        browser.close()
