"""The API's own surface: OpenAPI 3.1 with every error documented, metrics, probes."""

from __future__ import annotations

import re

import httpx
import pytest

ERRORS_EVERYWHERE = {"400", "500", "503", "504"}


@pytest.fixture(scope="module")
def schema(base_url: str) -> dict[str, object]:
    reply = httpx.get(f"{base_url}/openapi.json", timeout=10)
    assert reply.status_code == 200
    body: dict[str, object] = reply.json()
    return body


def test_openapi_is_3_1_and_documents_every_error(schema: dict[str, object]) -> None:
    assert str(schema["openapi"]).startswith("3.1")
    paths = schema["paths"]
    assert isinstance(paths, dict) and len(paths) == 6
    for path, operations in paths.items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "422" not in responses, (method, path)
            assert set(responses) >= ERRORS_EVERYWHERE, (method, path)
            for code in ERRORS_EVERYWHERE:
                ref = responses[code]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorBody"), (method, path, code)
            success = "201" if method == "post" else "200"
            assert "$ref" in responses[success]["content"]["application/json"]["schema"]


def test_the_schema_states_the_rules(schema: dict[str, object]) -> None:
    components = schema["components"]
    assert isinstance(components, dict)
    new = components["schemas"]["NewGeneration"]["properties"]
    assert new["provider_used"]["pattern"].startswith("^[a-z]")
    params = components["schemas"]["UserParams"]["properties"]
    assert (params["bars"]["minimum"], params["bars"]["maximum"]) == (1, 64)
    similar = schema["paths"]["/api/v1/similar/{artist}"]["get"]  # type: ignore[index]
    limit = next(p for p in similar["parameters"] if p["name"] == "limit")
    assert (limit["schema"]["minimum"], limit["schema"]["maximum"], limit["schema"]["default"]) == (
        1,
        20,
        5,
    )


def test_metrics_count_requests_by_route_template(base_url: str) -> None:
    httpx.get(f"{base_url}/api/v1/similar/J%20Dilla", timeout=10)
    httpx.get(f"{base_url}/api/v1/similar/Nobody%20Here", timeout=10)
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    assert (
        'http_requests_total{method="GET",route="/api/v1/similar/{artist:name}",status="200"}'
        in text
    )
    assert 'route="/api/v1/similar/{artist:name}",status="404"' in text
    assert "Nobody" not in text, "names must not become label values"
    assert "http_request_duration_seconds_bucket" in text


def test_metrics_are_the_apis_own_series_only(base_url: str) -> None:
    httpx.get(f"{base_url}/healthz", timeout=10)
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    declared = set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))
    own = {name for name in declared if not re.match(r"(process|python)_", name)}
    assert own == {"http_requests_total", "http_request_duration_seconds"}
    assert "_created" not in text


def test_probes(base_url: str) -> None:
    assert httpx.get(f"{base_url}/healthz", timeout=10).json()["status"] == "ok"
    ready = httpx.get(f"{base_url}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json() == {"status": "ok", "not_serving": []}


def test_unknown_paths_and_methods_use_the_error_shape(base_url: str) -> None:
    missing = httpx.get(f"{base_url}/api/v2/nothing", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    wrong = httpx.delete(f"{base_url}/api/v1/stats", timeout=10)
    assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"
    assert wrong.headers["allow"] == "GET"
