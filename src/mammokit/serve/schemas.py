"""The service's responses as pydantic models: each route declares its `response_model`, so `/openapi.json`
describes every response (docs/serving.md gives the meaning of each field).

The routes still build plain dicts (`serve.models.ServedModels`); FastAPI checks them against these models and
writes only the keys the dict has (`response_model_exclude_unset`), so the JSON is what it always was. Extra keys
are kept (`extra="allow"`), so a field added to a dict is never dropped silently; add it here too.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mammokit.infer.config import BACKENDS, HeatmapKind, Precision


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Health(_Open):
    status: Literal["ok"]
    version: str


class Ready(_Open):
    status: Literal["ready"]
    models: list[str] = Field(description="the served runs' names")


class ErrorBody(_Open):
    """Every error (4xx, 5xx): the message for the client and the request id to quote."""

    detail: str
    request_id: str
    errors: list[dict[str, Any]] | None = Field(None, description="422 on an upload: one entry per rejected file")


class Trial(_Open):
    backend: str
    ms_per_image: float | None
    max_abs_diff: float | None
    bar: float
    accepted: bool
    note: str = ""


class BackendSelection(_Open):
    """`--backend auto`'s choice on this machine and the measurements behind it (`infer.backend_select`)."""

    backend: str
    trials: list[Trial]
    machine: str
    input_hw: list[int]
    created: str
    reason: str


class ModelCardInfo(_Open):
    """One served run: its model card (model.json) and what the service adds."""

    name: str
    backend: str = Field(description="what computes p(malignant): one of " + ", ".join(BACKENDS[1:]))
    precision: Precision
    heatmap_backend: str
    backend_selection: BackendSelection | None
    calibrated: bool
    calibration_method: str | None
    tta: bool
    card: dict[str, Any] = Field(description="model.json as stored in the run folder")


class Limits(_Open):
    max_file_mb: float
    max_views: int
    max_megapixels: float
    min_side: int
    timeout_s: float
    body_timeout_s: float
    body_min_rate_kbs: float
    per_client: int
    upload_slots: int
    result_ttl_s: float


class ModelsResponse(_Open):
    """GET /v1/model."""

    models: list[ModelCardInfo]
    ensemble: bool
    aggregate: Literal["mean", "max"]
    heatmap_kinds: list[HeatmapKind]
    default_heatmap: HeatmapKind
    limits: Limits
    research_use_only: bool


class ModelSummary(_Open):
    """A served run, as each prediction names it."""

    name: str
    mammokit_version: str | None
    created: str | None
    backend: str
    precision: Precision
    threshold: float | None
    threshold_rule: str | None
    calibrated: bool
    tta: bool


class MemberResult(_Open):
    """One run's prediction of one view (an ensemble lists every member's)."""

    name: str
    prob_malignant: float
    prob_uncalibrated: float
    call: int | None
    threshold: float | None


class ViewResult(_Open):
    """One uploaded image."""

    index: int
    filename: str
    format: str | None
    laterality: str | None
    view: str | None
    laterality_source: str | None = Field(description='"file", "form" or "guess" (from the image)')
    view_source: str | None
    photometric: str | None
    spacing_mm: list[float] | None
    height: int | None
    width: int | None
    fit_scale: float = Field(description="> 1: the breast was shrunk by this factor to fit the model's canvas")
    context: Literal["contralateral", "single"] | None = Field(
        description='bilateral models: scored beside the other breast\'s same view, or "single" (alone)'
    )
    prob_malignant: float = Field(description="calibrated where the run has calibration.json; an ensemble's mean")
    prob_uncalibrated: float
    call: int | None = Field(description="1 = malignant at the run's threshold; None for an ensemble")
    threshold: float | None
    models: list[MemberResult]
    image_url: str | None = Field(None, description="the view as a PNG (a link, or a data: URL with inline)")
    heatmaps: dict[str, str] | None = Field(None, description="heatmap kind -> PNG link (or data: URL)")


class BreastResult(_Open):
    laterality: str
    prob_malignant: float
    call: int | None
    n_views: int


class ExamResult(_Open):
    prob_malignant: float
    call: int | None
    n_views: int
    n_breasts: int


class PredictResponse(_Open):
    """POST /v1/predict: each view, each breast, the exam, and notes on what the service decided."""

    models: list[ModelSummary]
    ensemble: bool
    aggregate: Literal["mean", "max"]
    threshold_calibrated: float | None
    views: list[ViewResult]
    breasts: list[BreastResult]
    exam: ExamResult | None
    notes: list[str]
    timings_ms: dict[str, float]
    request_id: str
    heatmap: HeatmapKind
    result_id: str | None = Field(None, description="where the PNGs are kept (GET /v1/results/...), for a while")
    expires_in_s: float | None = None


# the error answers each route may give, for `responses=` (the body is always an `ErrorBody`)
def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody} for status in statuses}
