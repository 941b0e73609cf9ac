"""`mammokit serve`: an HTTP prediction service (FastAPI + uvicorn, the `[serve]` extra) and a web viewer.

    from mammokit.serve import create_app
    app = create_app(["runs/whole"])          # an ASGI app; `mammokit serve RUN` runs it with uvicorn

Modules: `app` (routes, auth, logging), `models` (the runs as one ensemble, one exam per request),
`uploads` (in-memory multipart parsing and pre-decode checks), `work` (bounded queue, timeouts), `store`
(result PNGs held in memory), `settings` (`ServeConfig`), `static/viewer.html` (the page at `/`).
"""

from __future__ import annotations

from typing import Any


def create_app(*args: Any, **kwargs: Any) -> Any:
    """See `mammokit.serve.app.create_app` (imported lazily: FastAPI is an optional extra)."""
    from mammokit.serve.app import create_app as _create_app

    return _create_app(*args, **kwargs)
