"""The FastAPI application of `mammokit serve`.

Routes:
    GET  /                 the viewer (one self-contained page, package data; no CDN)
    POST /v1/predict       multipart upload of one image or one exam -> JSON (see docs/serving.md)
    GET  /v1/results/{id}/views/{i}/{name}.png   the view and heatmap PNGs a result links to (in memory)
    GET  /v1/model         the model cards
    GET  /healthz          the process is up
    GET  /readyz           the models are loaded (503 until then, or with the load error)
    GET  /docs, /openapi.json   the API description, every response typed (`serve.schemas`; Swagger UI from the package)

Safety: /v1/* needs `Authorization: Bearer TOKEN` when a token is set (required for a non-loopback bind; the
`authorised` dependency, a bearer scheme in /openapi.json); admission to an upload is the `admitted` dependency;
uploads are parsed in memory under size limits (`serve.uploads`), decoded in memory-capped worker processes
(`serve.decode`: a decoder crash costs that request, never the service), and must arrive at a minimum rate (else
408); one client address has at most `per_client` uploads in progress (else 429), bodies in memory are
bounded, a job slot is taken only once the body is in (a slow upload holds none), a bounded queue answers 503
+ Retry-After when full, and a request that runs past the timeout gets 504 (`serve.work`); nothing is written to
disk. Every response carries `X-Content-Type-Options: nosniff`. Logs carry a request id, sizes, status and
timings - never file names, header fields or pixels (messages about a file go to the client only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
import uuid
import warnings
from collections.abc import AsyncIterator
from importlib import resources
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from mammokit.infer.config import HEATMAP_KINDS
from mammokit.serve.decode import DecodePool
from mammokit.serve.models import ExamLimits, ServedModels
from mammokit.serve.schemas import Health, ModelsResponse, PredictResponse, Ready, errors
from mammokit.serve.settings import ServeConfig
from mammokit.serve.store import ResultStore
from mammokit.serve.uploads import FILE_FIELD, UploadError, parse_predict_form, precheck, within_deadline
from mammokit.serve.work import ClientBusy, JobTimeout, QueueFull, Upload, UploadGate, WorkQueue
from mammokit.version import __version__

log = logging.getLogger("mammokit.serve")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# `Authorization: Bearer TOKEN` (checked by `create_app`'s `authorised` dependency when a token is set); in OpenAPI
_BEARER = HTTPBearer(auto_error=False, description="needed when the server has a token (--token / MAMMOKIT_TOKEN)")


class Refused(Exception):
    """A request a dependency turns away: answered as the route's errors are (detail, request id, headers)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


_PREDICT_FORM_SCHEMA = {
    "type": "object",
    "required": [FILE_FIELD],
    "properties": {
        FILE_FIELD: {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": "one image or the views of one exam (at most 4): DICOM, PNG, PGM or JPEG",
        },
        "laterality": {
            "type": "array",
            "items": {"type": "string", "enum": ["", "L", "R"]},
            "description": "per file, in upload order: used where the file does not record it",
        },
        "view": {
            "type": "array",
            "items": {"type": "string"},
            "description": "per file, in upload order (CC, MLO, ...): used where the file does not record it",
        },
        "heatmap": {"type": "string", "enum": list(HEATMAP_KINDS)},
        "inline": {"type": "boolean", "description": "PNGs as base64 data: URLs instead of links"},
    },
}


# ---- dependencies: who may ask, and whether the service can take the request now ---------------------------------


def _state(request: Request) -> dict[str, Any]:
    return request.app.state.serve  # type: ignore[no-any-return]


def authorised(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]) -> None:
    """/v1/*: the bearer token, when the server has one (compared in constant time); else 401."""
    token = _state(request)["config"].token
    if not token:
        return
    value = credentials.credentials.strip() if credentials is not None else ""
    if not secrets.compare_digest(value.encode(), token.encode()):
        raise Refused(
            401,
            "this server needs a token: send 'Authorization: Bearer TOKEN' (in the viewer: enter it at the top)",
            headers={"WWW-Authenticate": "Bearer"},
        )


Authorised = Annotated[None, Depends(authorised)]


def _loaded(request: Request, retry_after: bool) -> ServedModels:
    models: ServedModels | None = _state(request)["models"]
    if models is None:
        raise Refused(503, "the models are not loaded yet; see /readyz", {"Retry-After": "5"} if retry_after else None)
    return models


def models_loaded(request: Request, _: Authorised) -> ServedModels:
    """The served models (after the token check), or 503 while they load."""
    return _loaded(request, retry_after=False)


def models_loaded_retry(request: Request, _: Authorised) -> ServedModels:
    """As `models_loaded`, the 503 with Retry-After (a prediction is worth sending again)."""
    return _loaded(request, retry_after=True)


ModelsLoaded = Annotated[ServedModels, Depends(models_loaded)]
ModelsLoadedRetry = Annotated[ServedModels, Depends(models_loaded_retry)]


def admitted(request: Request, _: ModelsLoadedRetry) -> Upload:
    """A place for one more upload: at most `per_client` per client address (429) and `upload_slots` in all,
    within the memory budget for bodies (503). Taken before the body is read; the route releases it."""
    state = _state(request)
    queue: WorkQueue = state["queue"]
    client = request.client.host if request.client else None  # the peer (or a trusted proxy's X-Forwarded-For)
    try:
        return state["gate"].enter(client, queue.retry_after_s)  # type: ignore[no-any-return]
    except (ClientBusy, QueueFull) as exc:
        status = 429 if isinstance(exc, ClientBusy) else 503
        raise Refused(status, str(exc), {"Retry-After": str(exc.retry_after_s)}) from None


Admitted = Annotated[Upload, Depends(admitted)]


def create_app(
    runs: list[str] | None = None, config: ServeConfig | None = None, *, models: ServedModels | None = None
) -> Any:
    """The ASGI app. Models load in the lifespan (from `runs`), unless `models` are given already loaded."""
    cfg = config or ServeConfig()
    state: dict[str, Any] = {"models": models, "load_error": None, "config": cfg}

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        quiet_header_logs()
        queue = WorkQueue(capacity=cfg.queue, workers=cfg.workers, timeout_s=cfg.timeout_s)
        state["queue"] = queue
        # bodies in memory at once: at most what `queue` full uploads hold (the bound the service always had)
        body_budget = cfg.queue * (cfg.max_views * int(cfg.max_file_mb * 1e6) + 2**20)
        state["gate"] = UploadGate(max_uploads=cfg.upload_slots, per_client=cfg.per_client, max_bytes=body_budget)
        state["store"] = ResultStore(ttl_s=cfg.result_ttl_s, max_bytes=int(cfg.result_store_mb * 2**20))
        decoder = DecodePool(cfg.workers, cfg.decode_memory_mb) if cfg.isolate_decoding else None
        state["decoder"] = decoder
        loader = None
        if state["models"] is None:
            loader = asyncio.create_task(asyncio.to_thread(_load, runs or [], cfg, state))
        try:
            yield
        finally:
            if loader is not None and not loader.done():
                await asyncio.wait([loader])
            queue.shutdown()
            if decoder is not None:
                decoder.shutdown()

    app = FastAPI(
        title="mammokit serve",
        version=__version__,
        summary="p(malignant) and heatmaps for screening mammograms (research use only; not a medical device)",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's own /docs and /redoc load their scripts from a CDN: replaced below
        redoc_url=None,
    )
    app.state.serve = state
    _add_offline_docs(app)
    quiet_header_logs()  # also here: an app built without its lifespan (tests) must not log header values either

    @app.exception_handler(Exception)
    async def unhandled(request: Request, exc: Exception) -> JSONResponse:
        # Starlette answers an unhandled exception outside every middleware: say it here, with the headers
        # every response carries, and log the exception type only (messages can quote a file or a header)
        rid = getattr(request.state, "request_id", "-")
        log.error("request_id=%s failed with %s", rid, type(exc).__name__)
        return JSONResponse(
            {"detail": f"internal error ({type(exc).__name__}); quote request id {rid}", "request_id": rid},
            500,
            headers={"X-Content-Type-Options": "nosniff", "X-Request-ID": rid},
        )

    def error(status: int, message: str, request_id: str, **extra: Any) -> JSONResponse:
        headers = extra.pop("headers", None)
        return JSONResponse({"detail": message, "request_id": request_id, **extra}, status, headers=headers)

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> JSONResponse:
        return error(exc.status, exc.message, request.state.request_id, headers=exc.headers)

    @app.middleware("http")
    async def request_log(request: Request, call_next: Any) -> Any:
        given = request.headers.get("x-request-id", "")
        rid = given if _REQUEST_ID.match(given) else uuid.uuid4().hex[:16]
        request.state.request_id = rid
        request.state.upload_bytes = 0
        start = time.perf_counter()
        response = await call_next(request)
        response.headers["X-Request-ID"] = rid
        # browsers must not guess a type from the bytes (an uploaded file echoed back must never run as HTML)
        response.headers["X-Content-Type-Options"] = "nosniff"
        log.info(
            "request_id=%s %s %s status=%d upload_bytes=%d response_bytes=%s ms=%.1f",
            rid,
            request.method,
            request.scope.get("route").path if request.scope.get("route") else "-",  # template, not the URL
            response.status_code,
            request.state.upload_bytes,
            response.headers.get("content-length", "-"),
            (time.perf_counter() - start) * 1e3,
        )
        return response

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def viewer() -> HTMLResponse:
        page = resources.files("mammokit.serve").joinpath("static/viewer.html").read_text(encoding="utf-8")
        return HTMLResponse(page, headers={"Cache-Control": "no-cache", "Content-Security-Policy": _CSP})

    @app.get("/healthz", summary="the process is up", response_model=Health)
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", summary="the models are loaded", response_model=Ready, responses=errors(503))
    async def readyz(request: Request) -> Any:
        if state["models"] is not None:
            return {"status": "ready", "models": state["models"].names}
        if state["load_error"]:
            return error(503, f"the models failed to load: {state['load_error']}", request.state.request_id)
        return error(503, "the models are loading", request.state.request_id, headers={"Retry-After": "5"})

    @app.get(
        "/v1/model",
        summary="the model cards of the served runs",
        response_model=ModelsResponse,
        response_model_exclude_unset=True,
        responses=errors(401, 503),
    )
    async def model(models: ModelsLoaded) -> Any:
        return {
            "models": models.cards(),
            "ensemble": len(models.names) > 1,
            "aggregate": models.aggregate,
            "heatmap_kinds": models.heatmap_kinds,
            "default_heatmap": cfg.default_heatmap,
            "limits": {
                "max_file_mb": cfg.max_file_mb,
                "max_views": cfg.max_views,
                "max_megapixels": cfg.max_megapixels,
                "min_side": cfg.min_side,
                "timeout_s": cfg.timeout_s,
                "body_timeout_s": cfg.body_timeout_s,
                "body_min_rate_kbs": cfg.body_min_rate_kbs,
                "per_client": cfg.per_client,
                "upload_slots": cfg.upload_slots,
                "result_ttl_s": cfg.result_ttl_s,
            },
            "research_use_only": True,
        }

    @app.post(
        "/v1/predict",
        summary="p(malignant), the call, per-breast/exam results and heatmaps for one image or one exam",
        response_model=PredictResponse,
        response_model_exclude_unset=True,
        responses=errors(400, 401, 408, 413, 415, 422, 429, 500, 503, 504),
        openapi_extra={
            "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": _PREDICT_FORM_SCHEMA}}}
        },
    )
    async def predict(
        request: Request,
        models: ModelsLoadedRetry,
        upload: Admitted,  # taken before the body is read; a job slot only once the body is in (serve.work)
    ) -> Any:
        rid = request.state.request_id
        queue: WorkQueue = state["queue"]
        slot = None
        try:
            max_file = int(cfg.max_file_mb * 1e6)
            declared = int(request.headers.get("content-length") or 0)
            if declared > cfg.max_views * max_file + 2**20:
                raise UploadError(413, f"upload of {declared / 1e6:.0f} MB is larger than this server accepts")
            body = within_deadline(
                _reserved(request.stream(), upload, queue.retry_after_s),
                timeout_s=cfg.body_timeout_s,
                min_rate_bytes_s=cfg.body_min_rate_kbs * 1e3,
            )
            form = await parse_predict_form(
                request.headers.get("content-type"), body, max_file_bytes=max_file, max_files=cfg.max_views
            )
            request.state.upload_bytes = form.n_bytes
            heatmap = (form.fields.get("heatmap") or [cfg.default_heatmap])[-1] or cfg.default_heatmap
            inline = (form.fields.get("inline") or ["false"])[-1].lower() in ("1", "true", "yes", "on")
            for uploaded in form.files:
                precheck(uploaded, max_pixels=int(cfg.max_megapixels * 1e6))
            slot = queue.acquire(on_release=upload.release)  # the upload's bytes stay reserved until its job ends
            start = time.perf_counter()
            result = await slot.run(
                lambda: models.predict_exam(
                    form.files,
                    lateralities=form.fields.get("laterality", []),
                    views=form.fields.get("view", []),
                    heatmap=heatmap,
                    limits=ExamLimits(min_side=cfg.min_side, display_max_side=cfg.display_max_side),
                    store=state["store"],
                    inline=inline,
                    decoder=state.get("decoder"),
                )
            )
            result["timings_ms"]["total"] = round((time.perf_counter() - start) * 1e3, 1)
            result["request_id"] = rid
            result["heatmap"] = heatmap
            return result
        except QueueFull as exc:
            return error(503, str(exc), rid, headers={"Retry-After": str(exc.retry_after_s)})
        except UploadError as exc:
            extra: dict[str, Any] = {"errors": exc.errors} if exc.errors else {}
            if exc.status == 408:  # the rest of the body is not worth reading: close the connection after this
                extra["headers"] = {"Connection": "close"}
            if exc.status == 503:
                extra["headers"] = {"Retry-After": str(queue.retry_after_s)}
            return error(exc.status, exc.message, rid, **extra)
        except JobTimeout as exc:
            return error(504, str(exc), rid)
        except Exception as exc:  # a bug or a model failure: the type only (messages can name the file)
            log.error("request_id=%s failed with %s", rid, type(exc).__name__)
            return error(500, f"internal error ({type(exc).__name__}); quote request id {rid}", rid)
        finally:
            if slot is None:
                upload.release()
            else:
                slot.release_if_unused()

    @app.get(
        "/v1/results/{result_id}/views/{index}/{name}",
        summary="a PNG linked from a prediction",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}, "description": "the PNG"}, **errors(401, 404)},
    )
    async def result_file(request: Request, result_id: str, index: int, name: str, _: Authorised) -> Any:
        data = state["store"].get(result_id, f"views/{index}/{name}")
        if data is None:
            return error(
                404, "no such result file (results are kept in memory for a limited time)", request.state.request_id
            )
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=60"})

    return app


async def _reserved(stream: AsyncIterator[bytes], upload: Upload, retry_after_s: int) -> AsyncIterator[bytes]:
    """`stream`'s chunks, each reserved against the memory budget for bodies (HTTP 503 when it is spent)."""
    async for chunk in stream:
        try:
            upload.reserve(len(chunk), retry_after_s)
        except QueueFull as exc:
            raise UploadError(503, f"the server holds as many uploads as it can right now; {exc}") from None
        yield chunk


# The viewer is one inline page: scripts/styles from itself, images from this server (blob:/data: URLs).
_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def _add_offline_docs(app: Any) -> None:
    """/docs: Swagger UI from the `swagger-ui-bundle` package (the [serve] extra), so it works offline.

    FastAPI's default page fetches swagger-ui from a CDN, which a hospital network or an air-gapped
    workstation cannot reach. Without the package, /docs says how to get it; /openapi.json always works.
    """
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:

        @app.get("/docs", include_in_schema=False)
        async def docs_missing() -> HTMLResponse:
            return HTMLResponse(
                "<p>The API page needs the <code>swagger-ui-bundle</code> package "
                "(<code>pip install 'mammokit[serve]'</code>); the API description is at "
                "<a href='/openapi.json'>/openapi.json</a>.</p>",
                status_code=503,
            )

        return

    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    app.mount("/docs-assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} - API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )


def _load(runs: list[str], cfg: ServeConfig, state: dict[str, Any]) -> None:
    from mammokit.infer.export_cache import set_cache_root

    start = time.perf_counter()
    set_cache_root(cfg.cache_dir)  # the ONNX export and backend selection: never into a run folder
    try:
        state["models"] = ServedModels.load(
            runs,
            device=cfg.device,
            backend=cfg.backend,
            tta=cfg.tta,
            aggregate=cfg.aggregate,
            assume_pixel_spacing=cfg.assume_pixel_spacing,
        )
    except Exception as exc:  # reported on /readyz and in the log; the process stays up to say so
        state["load_error"] = f"{type(exc).__name__}: {exc}"
        log.error("loading the models failed: %s", state["load_error"])
        return
    if state.get("decoder") is not None:
        state["decoder"].warm_up()  # the decode workers start now, not on the first upload
    log.info("loaded %d model(s) in %.1f s; ready", len(runs), time.perf_counter() - start)


def quiet_header_logs() -> None:
    """Keep pydicom's messages (and warnings), which quote header values, out of the service log.

    `mammokit.utils.quiet_logs.quiet_pydicom` filters the pydicom logger itself (a level set here would not last:
    importing pydicom resets it to WARNING); warnings from pydicom are ignored as well.
    """
    from mammokit.utils.quiet_logs import quiet_pydicom

    quiet_pydicom()
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?")
