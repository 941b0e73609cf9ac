"""`mammokit serve RUN [RUN ...]`: the HTTP prediction service and the web viewer (see docs/serving.md).

Loads the runs once (several = an ensemble averaged as in `mammokit evaluate`) through the same
`Predictor` as `mammokit predict`, and serves `POST /v1/predict`, `GET /v1/model`, `/healthz`, `/readyz`,
`/docs` and the viewer at `/`. Binds to 127.0.0.1 unless told otherwise; any other address needs a token.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from mammokit.cli.common import (
    UserError,
    add_assume_pixel_spacing,
    add_cache_dir,
    add_command,
    add_config_args,
    add_device,
    add_workers,
    device_flag,
    load_cli_config,
)
from mammokit.infer.config import BACKENDS, HEATMAP_KINDS, PRECISIONS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers,
        "serve",
        help="HTTP prediction service and web viewer for trained whole-image runs",
        description=(
            "Serve one or more whole-image runs over HTTP: POST /v1/predict (one image or one exam of up to 4 "
            "views, multipart), GET /v1/model, /healthz, /readyz, /docs, and a viewer page at /. Several runs are "
            "averaged as an ensemble. Binds to 127.0.0.1 by default; another address needs --token (or "
            "$MAMMOKIT_SERVE_TOKEN). Uploads and results stay in memory; nothing is written into the run folders "
            "(which may be read-only): the one thing written to disk is the model cache (ONNX export and backend "
            "choice, once per model and machine) under --cache-dir. Research use only."
        ),
    )
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="whole-image run folders (hold model.json)")
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000)")
    p.add_argument(
        "--token",
        default=None,
        help="bearer token required on /v1/* (default: $MAMMOKIT_SERVE_TOKEN); required for a non-loopback --host",
    )
    add_config_args(p)
    add_device(p)
    add_workers(p)
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="what computes p(malignant), as for `mammokit predict`: auto (default: the fastest within the accuracy "
        "bar on this machine, measured once per model and machine, cached under --cache-dir), torch, torch-bf16, "
        "onnx (no heatmaps) or openvino",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="compute precision, as for `mammokit predict` (default float32: the same numbers on every CPU; "
        "bfloat16 only when asked, and then the backend is torch-bf16, shown in /v1/model)",
    )
    p.add_argument("--aggregate", choices=("mean", "max"), default=None, help="views of a breast (default mean)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None, help="flip test-time augmentation")
    add_assume_pixel_spacing(p)
    p.add_argument("--heatmap", choices=HEATMAP_KINDS, default=None, help="default heatmap")
    p.add_argument("--max-file-mb", type=float, default=None, metavar="MB", help="upload limit per file (100)")
    p.add_argument("--max-megapixels", type=float, default=None, metavar="MP", help="image size limit (40)")
    p.add_argument("--queue", type=int, default=None, metavar="N", help="requests admitted at once; more get 503 (8)")
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="per-request limit in seconds (60)")
    p.add_argument(
        "--body-timeout",
        type=float,
        default=None,
        metavar="S",
        help="seconds to receive an upload, plus 1 s per --body-min-rate kB received; slower uploads get 408 (20)",
    )
    p.add_argument(
        "--body-min-rate",
        type=float,
        default=None,
        metavar="KB/S",
        help="upload rate (kB/s) that extends --body-timeout: a trickling client is cut off, a large fast "
        "one never (100)",
    )
    p.add_argument(
        "--per-client",
        type=int,
        default=None,
        metavar="N",
        help="requests in progress per client address; more get 429, so one client cannot fill the queue (2)",
    )
    p.add_argument(
        "--trusted-proxy",
        default=None,
        metavar="ADDR",
        help="address(es) of a reverse proxy whose X-Forwarded-For names the client (comma-separated; default: none, "
        "the header is ignored and each connection's own address counts for --per-client)",
    )
    add_cache_dir(p)
    p.set_defaults(func=run)


def _config(args: argparse.Namespace) -> Any:
    from mammokit.serve.settings import TOKEN_ENV, ServeConfig

    flags: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "token": args.token or os.environ.get(TOKEN_ENV) or None,
        "device": device_flag(args),
        "workers": args.workers,
        "backend": args.backend,
        "precision": args.precision,
        "aggregate": args.aggregate,
        "tta": args.tta,
        "assume_pixel_spacing": args.assume_pixel_spacing,
        "default_heatmap": args.heatmap,
        "max_file_mb": args.max_file_mb,
        "max_megapixels": args.max_megapixels,
        "queue": args.queue,
        "timeout_s": args.timeout,
        "body_timeout_s": args.body_timeout,
        "body_min_rate_kbs": args.body_min_rate,
        "per_client": args.per_client,
        "trusted_proxies": args.trusted_proxy,
        "cache_dir": str(args.cache_dir) if args.cache_dir else None,
    }
    return load_cli_config(ServeConfig, args, flags)


def _check_runs(runs: list[Path], backend: str) -> None:
    """Fail before starting the server when a run folder cannot be served (the message says why)."""
    from mammokit.run import WEIGHTS, RunFolderError, read_card

    for run_dir in runs:
        try:
            card = read_card(run_dir)
        except (RunFolderError, ValueError) as exc:
            raise UserError(str(exc)) from None
        if card.task != "whole":
            raise UserError(f"{run_dir} is a {card.task!r} run; serve whole-image runs (`mammokit train whole`)")
        needed = "model.onnx" if backend == "onnx" else WEIGHTS
        if not (run_dir / needed).is_file():
            hint = " (`mammokit export` writes it)" if backend == "onnx" else ""
            raise UserError(f"{run_dir}: {needed} is missing{hint}")


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from mammokit.serve.app import create_app
    except ModuleNotFoundError as exc:
        raise UserError(
            f"`mammokit serve` needs the serve extra ({exc.name} is missing): pip install 'mammokit[serve]'"
        ) from None
    cfg = _config(args)
    _check_runs(list(args.runs), cfg.backend)
    app = create_app([str(r) for r in args.runs], cfg)
    import logging

    logging.getLogger("mammokit.serve").info(
        "serving %d run(s) on http://%s:%d/ (token %s)",
        len(args.runs),
        cfg.host,
        cfg.port,
        "on" if cfg.token else "off",
    )
    # access_log off: the app logs each request itself with a request id, sizes and timings (no URLs, no names)
    # proxy headers only from a proxy named with --trusted-proxy: uvicorn's default trusts 127.0.0.1, where any
    # local client could then give itself a new address per request and escape --per-client
    uvicorn.run(
        app,
        host=cfg.host,
        port=cfg.port,
        access_log=False,
        log_config=None,
        proxy_headers=bool(cfg.trusted_proxies),
        forwarded_allow_ips=cfg.trusted_proxies or "",
    )
    return 0
