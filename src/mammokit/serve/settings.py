"""`ServeConfig`: the options of `mammokit serve` (also readable from YAML with -c / --set)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from mammokit.config import ConfigError
from mammokit.infer.config import AUTO, Backend, HeatmapKind, Precision, resolve_precision

TOKEN_ENV = "MAMMOKIT_SERVE_TOKEN"


@dataclass
class ServeConfig:
    """Service options; the models' preprocessing comes from the run folders, as for `mammokit predict`."""

    host: str = "127.0.0.1"  # loopback by default; any other address needs a token
    port: int = 8000
    token: str | None = None  # bearer token for /v1/*; default: $MAMMOKIT_SERVE_TOKEN
    # auto = the fastest backend within the accuracy bar on this machine (as `mammokit predict --backend auto`)
    backend: Backend = AUTO
    # float32 unless asked (auto chooses among float32 backends only); validate() resolves it with the backend
    precision: Precision | None = None
    device: str = "auto"
    tta: bool | None = None  # None = as each run's calibration.json was fitted (plain without one)
    assume_pixel_spacing: float | None = None  # mm/pixel for files without a spacing tag (pixel-spacing runs)
    aggregate: Literal["mean", "max"] = "mean"  # views of one breast, as `mammokit evaluate --aggregate`
    default_heatmap: HeatmapKind = "gradcam"  # when a request names none
    max_file_mb: float = 100.0  # per uploaded file
    max_views: int = 4  # files per request (one exam)
    max_megapixels: float = 40.0  # declared image size limit (largest FFDM detectors are ~30 MP)
    min_side: int = 128  # px; smaller images are refused
    queue: int = 8  # requests admitted at once (running + waiting); more get HTTP 503 + Retry-After
    workers: int = 2  # requests processed in parallel (reading overlaps the serialised model stage)
    timeout_s: float = 60.0  # per request; HTTP 504 after it
    # Slow clients (issue 25): an upload body must arrive within body_timeout_s, extended by 1 s for every
    # body_min_rate_kbs kB received (Apache mod_reqtimeout's "body=20,MinRate=..." rule); else HTTP 408.
    # A 1 byte/s trickle is cut off after ~20 s; a 100 MB exam at 1 MB/s gets 20 + 100 s.
    body_timeout_s: float = 20.0
    body_min_rate_kbs: float = 100.0  # kB/s (1 kB = 1000 bytes)
    per_client: int = 2  # uploads in progress (body or prediction) per client address; more get HTTP 429
    # uploads in progress in all (bodies being received + jobs): a trickling body costs a socket and a few bytes,
    # not a job slot, so this can be well above `queue`; body bytes in memory stay bounded by queue x upload limit
    upload_slots: int = 64
    # Addresses of reverse proxies whose X-Forwarded-For names the client (uvicorn's forwarded_allow_ips); None =
    # ignore that header: a client could otherwise name itself anew in every request and dodge per_client
    trusted_proxies: str | None = None
    # uploads are decoded in `workers` processes, each capped at its start-up size + decode_memory_mb MiB (a 40 MP
    # image is 160 MB as float32; decoders need a few copies): a crash or runaway allocation costs that upload only
    decode_memory_mb: float = 2048.0
    isolate_decoding: bool = True  # False: decode in the service process (faster to start; for debugging only)
    cache_dir: str | None = None  # ONNX export + backend selection; None = the user cache dir (never the run)
    result_ttl_s: float = 600.0  # how long a result's PNGs stay fetchable
    result_store_mb: float = 256.0  # memory for result PNGs (oldest results dropped first)
    display_max_side: int = 1024  # px; longer side of the view/heatmap PNGs

    def validate(self) -> None:
        positive = ("max_file_mb", "max_megapixels", "timeout_s", "result_ttl_s", "result_store_mb", "body_timeout_s",
                    "body_min_rate_kbs", "decode_memory_mb")  # fmt: skip
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("max_views", "queue", "workers", "min_side", "display_max_side", "per_client", "upload_slots"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        if self.queue < self.workers:
            raise ConfigError(f"queue ({self.queue}) must be at least workers ({self.workers})")
        # bfloat16 -> the torch-bf16 backend; a float32-only backend asked for bfloat16 is refused
        self.backend, self.precision = resolve_precision(self.backend, self.precision)  # type: ignore[assignment]
        if self.backend == "onnx" and self.default_heatmap != "none":
            self.default_heatmap = "none"  # ONNX Runtime has no gradients: no Grad-CAM, no patch maps
        if not is_loopback(self.host) and not self.token:
            raise ConfigError(
                f"binding to {self.host!r} exposes the service beyond this machine: set a token with --token or "
                f"${TOKEN_ENV} (clients then send 'Authorization: Bearer TOKEN'), or bind to 127.0.0.1"
            )


def is_loopback(host: str) -> bool:
    """True for 'localhost' and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere
