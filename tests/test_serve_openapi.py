"""/openapi.json describes every response of the service (issue 24): each route declares a pydantic response model,
and the key fields a client reads are in it, with their types."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from mammokit.infer.config import BACKENDS, HEATMAP_KINDS, PRECISIONS
from mammokit.serve.app import create_app
from mammokit.serve.settings import ServeConfig


@pytest.fixture(scope="module")
def spec() -> dict:
    # no lifespan: the description needs no model loaded
    return TestClient(create_app([], ServeConfig())).get("/openapi.json").json()


def _schema(spec: dict, node: dict) -> dict:
    """`node` with its $ref (and a nullable anyOf's ref) followed to the component schema."""
    if "$ref" in node:
        return spec["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    refs = [n for n in node.get("anyOf", []) if "$ref" in n or n.get("type") == "array"]
    return _schema(spec, refs[0]) if refs else node


def _response(spec: dict, path: str, method: str = "get", status: str = "200") -> dict:
    content = spec["paths"][path][method]["responses"][status]["content"]
    return _schema(spec, content["application/json"]["schema"])


def test_every_route_declares_its_response(spec):
    routes = {path: methods for path, methods in spec["paths"].items()}
    assert set(routes) == {
        "/healthz",
        "/readyz",
        "/v1/model",
        "/v1/predict",
        "/v1/results/{result_id}/views/{index}/{name}",
    }
    for path, methods in routes.items():
        for method, op in methods.items():
            ok = op["responses"]["200"]["content"]
            assert "application/json" in ok or "image/png" in ok, (path, method)
            if "application/json" in ok:
                assert _response(spec, path, method)["properties"], (path, method)  # a schema with fields, not {}
    for path in ("/readyz", "/v1/model", "/v1/predict"):  # errors: the one error body
        for status, answer in next(iter(routes[path].values()))["responses"].items():
            if status != "200":
                schema = _schema(spec, answer["content"]["application/json"]["schema"])
                assert schema["required"] == ["detail", "request_id"], (path, status)


def test_predict_response_names_the_fields_a_client_reads(spec):
    body = _response(spec, "/v1/predict", "post")
    assert {"views", "breasts", "exam", "models", "notes", "ensemble", "request_id", "heatmap"} <= set(body["required"])
    view = _schema(spec, body["properties"]["views"]["items"])
    for field in ("prob_malignant", "prob_uncalibrated", "call", "threshold", "context", "fit_scale", "laterality",
                  "view", "models"):  # fmt: skip
        assert field in view["properties"], field
    assert view["properties"]["prob_malignant"]["type"] == "number"
    assert {"contralateral", "single"} <= set(view["properties"]["context"]["anyOf"][0]["enum"])
    assert "heatmaps" in view["properties"] and "image_url" in view["properties"]
    member = _schema(spec, view["properties"]["models"]["items"])
    assert {"name", "prob_malignant", "prob_uncalibrated", "call", "threshold"} <= set(member["properties"])
    summary = _schema(spec, body["properties"]["models"]["items"])
    assert set(_schema(spec, summary["properties"]["precision"])["enum"]) == set(PRECISIONS)
    assert set(_schema(spec, body["properties"]["heatmap"])["enum"]) == set(HEATMAP_KINDS)
    exam = _schema(spec, body["properties"]["exam"])
    assert {"prob_malignant", "call", "n_views", "n_breasts"} <= set(exam["properties"])


def test_model_health_and_ready_responses_are_described(spec):
    model = _response(spec, "/v1/model")
    card = _schema(spec, model["properties"]["models"]["items"])
    assert {"name", "backend", "precision", "heatmap_backend", "backend_selection", "card", "tta"} <= set(
        card["required"]
    )
    assert all(b in card["properties"]["backend"]["description"] for b in BACKENDS[1:])
    assert set(_schema(spec, model["properties"]["heatmap_kinds"]["items"])["enum"]) == set(HEATMAP_KINDS)
    assert "limits" in model["properties"]
    assert set(_response(spec, "/healthz")["properties"]) == {"status", "version"}
    assert set(_response(spec, "/readyz")["properties"]) == {"status", "models"}


def test_the_response_models_leave_the_json_as_the_service_builds_it(tmp_path, monkeypatch):
    """The declared models check the answers and change nothing: the JSON is the dict the service built."""
    from mammokit.serve.models import ServedModels
    from serve_support import make_exam, make_runs, multipart, wait_ready

    built = {}
    real = ServedModels.predict_exam

    def keep(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        built["result"] = real(self, *args, **kwargs)
        return built["result"]

    monkeypatch.setattr(ServedModels, "predict_exam", keep)
    runs, exam = make_runs(tmp_path / "runs"), make_exam(tmp_path / "exam")
    with TestClient(create_app([str(runs)], ServeConfig(timeout_s=900))) as client:
        wait_ready(client)
        body = client.post("/v1/predict", files=multipart(exam[:2]), data={"heatmap": "gradcam"}).json()
        assert body == built["result"]  # the same keys and values (request_id, heatmap, total time added in place)
        assert "result_id" in body and body["views"][0]["heatmaps"]
        model = client.get("/v1/model").json()
        assert model["models"][0]["card"]["task"] == "whole" and model["models"][0]["precision"] == "float32"


def test_the_token_is_a_declared_bearer_scheme_on_every_v1_route(spec):
    assert [s["scheme"] for s in spec["components"]["securitySchemes"].values()] == ["bearer"]
    for path, methods in spec["paths"].items():
        for op in methods.values():
            assert bool(op.get("security")) == path.startswith("/v1/"), path
