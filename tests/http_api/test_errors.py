"""Errors: one JSON shape, the gRPC-to-HTTP mapping, and hostile input never reaching 500."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable, Iterator

import grpc
import httpx
import pytest

from services.http_api.errors import HTTP_STATUS, from_rpc_error
from tests.faults.proxy import FaultProxy

PARAMS: dict[str, object] = {"bars": 4, "tempo": 90, "time_signature": "4/4", "variations": 1}
GOOD_BODY: dict[str, object] = {
    "artist_name": "J Dilla",
    "provider_used": "openai",
    "generation_time_ms": 100,
    "user_params": PARAMS,
}


def eventually(check: Callable[[], bool], within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def raw_get(base_url: str, target: str) -> tuple[int, bytes]:
    host, port = httpx.URL(base_url).host, httpx.URL(base_url).port
    assert port is not None
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.fixture(scope="module")
def client(base_url: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=30)


def assert_error(reply: httpx.Response, status: int, error: str, field: str | None = None) -> None:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert body["error"] == error, body
    assert isinstance(body["message"], str) and body["message"]
    if status == 400:
        fields = [v["field"] for v in body["field_violations"]]
        assert field is None or field in fields, body
        assert field is None or field in body["message"], body
    else:
        assert set(body) == {"error", "message"}, body


def test_unknown_artist_is_the_spec_404_exactly(client: httpx.Client) -> None:
    reply = client.get("/api/v1/similar/Unknown%20Artist")
    assert reply.status_code == 404
    assert reply.json() == {
        "error": "artist_not_found",
        "message": "Artist 'Unknown Artist' not found in database",
    }
    for path in ("/api/v1/artists/Unknown%20Artist/history", "/api/v1/artists/Nobody/profile"):
        assert_error(client.get(path), 404, "artist_not_found")


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/v1/similar/J%20Dilla?limit=0", "limit"),
        ("/api/v1/similar/J%20Dilla?limit=21", "limit"),
        ("/api/v1/similar/J%20Dilla?limit=-5", "limit"),
        (f"/api/v1/similar/J%20Dilla?limit={10**30}", "limit"),
        ("/api/v1/similar/J%20Dilla?limit=five", "limit"),
        ("/api/v1/similar/J%20Dilla?min_tempo=nan", "min_tempo"),
        ("/api/v1/similar/J%20Dilla?max_tempo=inf", "max_tempo"),
        ("/api/v1/similar/J%20Dilla?status=bogus", "status"),
        ("/api/v1/similar/J%20Dilla?status=%00", "status"),
        ("/api/v1/artists/J%20Dilla/history?limit=0", "limit"),
        ("/api/v1/artists/J%20Dilla/history?limit=101", "limit"),
        ("/api/v1/artists/J%20Dilla/history?page_token=not-a-token", "page_token"),
        ("/api/v1/artists?page_size=0", "page_size"),
        ("/api/v1/artists?page_size=1000000000000", "page_size"),
        ("/api/v1/artists?page_token=%00%01", "page_token"),
        ("/api/v1/artists/J%20Dilla/profile?min_version=-1", "min_version"),
        ("/api/v1/stats?since=yesterday", "since"),
        ("/api/v1/stats?since=2026-13-45T99:00:00Z", "since"),
        ("/api/v1/stats?until=2026-12-02T10:00:00", "until"),  # no offset: not RFC 3339
        ("/api/v1/stats?since=0001-01-01T00:00:00%2B01:00", "since"),  # before year 1 in UTC
        ("/api/v1/stats?since=1733130000", "since"),  # a number is not RFC 3339
        ("/api/v1/stats?since=2026-12-02", "since"),  # nor is a date alone
    ],
)
def test_bad_parameters_are_400_naming_the_field(
    client: httpx.Client, path: str, field: str
) -> None:
    assert_error(client.get(path), 400, "invalid_argument", field)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("since", "0001-01-01T00:00:00Z"),
        ("until", "9999-12-31T23:59:59.999999Z"),
        ("since", "1969-12-31T23:59:59.999999-14:00"),
        ("until", "9999-12-31T23:59:59+14:00"),
    ],
)
def test_timestamps_at_the_edges_of_their_range_are_served_or_named(
    client: httpx.Client, field: str, value: str
) -> None:
    reply = client.get("/api/v1/stats", params={field: value})
    if reply.status_code != 200:
        assert_error(reply, 400, "invalid_argument", field)


@pytest.mark.parametrize(
    "name", ["nul\x00inside", "\x01\x02\x1f", "x" * 256, "line\nbreak", " ", "\u202e"]
)
def test_hostile_artist_names_in_the_path_are_400_or_404(client: httpx.Client, name: str) -> None:
    for template in (
        "/api/v1/similar/{}",
        "/api/v1/artists/{}/history",
        "/api/v1/artists/{}/profile",
    ):
        reply = client.get(template.format("".join(f"%{b:02X}" for b in name.encode())))
        assert reply.status_code in (400, 404), (template, reply.status_code, reply.text)
        assert reply.json()["error"] in ("invalid_argument", "artist_not_found")


@pytest.mark.parametrize("size", [60_000, 1_000_000])
@pytest.mark.parametrize(
    ("target", "field"),
    [
        ("/api/v1/similar/{}", "artist"),
        ("/api/v1/stats?since={}", "since"),
        ("/api/v1/artists?page_token={}", "page_token"),
    ],
)
def test_a_megabyte_in_the_path_or_the_query_is_400(
    base_url: str, target: str, field: str, size: int
) -> None:
    # Past what httpx will send (64 KiB URLs): written on the socket by hand.
    status, body = raw_get(base_url, target.format("x" * size))
    assert status == 400, body[:300]
    reply = json.loads(body)
    assert reply["error"] == "invalid_argument"
    # Under the parser's 64 KiB the route names the field; past it, the request as a whole.
    named = field if size < 65_536 else "request"
    assert named in [v["field"] for v in reply["field_violations"]], reply["message"][:200]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({k: v for k, v in GOOD_BODY.items() if k != "provider_used"}, "provider_used"),
        ({**GOOD_BODY, "generation_time_ms": 2**40}, "generation_time_ms"),
        ({**GOOD_BODY, "generation_time_ms": -1}, "generation_time_ms"),
        ({**GOOD_BODY, "generation_time_ms": 1.5}, "generation_time_ms"),
        ({**GOOD_BODY, "tokens_used": 2**70}, "tokens_used"),
        ({**GOOD_BODY, "cost_usd": -3}, "cost_usd"),
        ({**GOOD_BODY, "provider_used": "x" * 1_000_000}, "provider_used"),
        ({**GOOD_BODY, "provider_used": "open\x00ai"}, "provider_used"),
        ({**GOOD_BODY, "user_params": {"bars": 10**12}}, "user_params.bars"),
        ({**GOOD_BODY, "user_params": {**PARAMS, "tempo": 0}}, None),
        ({**GOOD_BODY, "surprise": 1}, "surprise"),
        ({**GOOD_BODY, "request_id": "x"}, "request_id"),  # the Idempotency-Key header's job
        ({**GOOD_BODY, "cost_usd": False}, "cost_usd"),
        ({**GOOD_BODY, "generation_time_ms": True}, "generation_time_ms"),
    ],
)
def test_bad_generations_are_400_and_write_nothing(
    client: httpx.Client, body: dict[str, object], field: str | None
) -> None:
    before = client.get("/api/v1/stats").json()["total_generations"]
    assert_error(client.post("/api/v1/generations", json=body), 400, "invalid_argument", field)
    assert client.get("/api/v1/stats").json()["total_generations"] == before


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"provider_used": ', None),
        (b"[]", None),
        (b"not json at all", None),
        (json.dumps({**GOOD_BODY, "cost_usd": "NaN"}).replace('"NaN"', "NaN").encode(), "cost_usd"),
        (json.dumps({**GOOD_BODY, "cost_usd": 1e400}).encode(), "cost_usd"),
        (json.dumps(GOOD_BODY).replace('"openai"', '"\\ud800"').encode(), "provider_used"),
    ],
)
def test_malformed_bodies_are_400(client: httpx.Client, raw: bytes, field: str | None) -> None:
    reply = client.post(
        "/api/v1/generations", content=raw, headers={"content-type": "application/json"}
    )
    assert_error(reply, 400, "invalid_argument", field)


def test_an_oversized_body_is_413_before_it_is_read(client: httpx.Client) -> None:
    reply = client.post("/api/v1/generations", json={**GOOD_BODY, "pad": "x" * 3_000_000})
    assert_error(reply, 413, "payload_too_large")


def test_an_oversized_chunked_body_is_413_too(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"pad": "'
        for _ in range(40):
            yield b"x" * 100_000
        yield b'"}'

    reply = client.post(
        "/api/v1/generations", content=chunks(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in reply.request.headers
    assert_error(reply, 413, "payload_too_large")


def test_unknown_artist_in_a_generation_is_404(client: httpx.Client) -> None:
    reply = client.post("/api/v1/generations", json={**GOOD_BODY, "artist_name": "Nobody Here"})
    assert_error(reply, 404, "artist_not_found")


def test_a_bad_idempotency_key_is_400(client: httpx.Client) -> None:
    reply = client.post(
        "/api/v1/generations", json=GOOD_BODY, headers={"Idempotency-Key": "has spaces"}
    )
    assert_error(reply, 400, "invalid_argument", "request_id")


def test_an_idempotency_key_reused_for_another_body_is_409(client: httpx.Client) -> None:
    headers = {"Idempotency-Key": "reused-key-0001"}
    assert client.post("/api/v1/generations", json=GOOD_BODY, headers=headers).status_code == 201
    other = {**GOOD_BODY, "generation_time_ms": 101}
    reply = client.post("/api/v1/generations", json=other, headers=headers)
    assert_error(reply, 409, "request_id_reused")


def test_request_id_is_echoed_or_made(client: httpx.Client) -> None:
    mine = client.get("/api/v1/stats", headers={"X-Request-Id": "trace-me-42"})
    assert mine.headers["x-request-id"] == "trace-me-42"
    made = client.get("/api/v1/stats")
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    too_long = client.get("/api/v1/stats", headers={"X-Request-Id": "x" * 200})
    assert re.fullmatch(r"[0-9a-f]{32}", too_long.headers["x-request-id"])
    failed = client.get("/api/v1/similar/Nobody", headers={"X-Request-Id": "on-errors-too"})
    assert failed.status_code == 404 and failed.headers["x-request-id"] == "on-errors-too"


@pytest.mark.parametrize("value", ["soon", "0", "-1", "1000", "5 minutes", "1e9"])
def test_bad_request_timeouts_are_400(client: httpx.Client, value: str) -> None:
    reply = client.get("/api/v1/stats", headers={"X-Request-Timeout": value})
    assert_error(reply, 400, "invalid_argument", "X-Request-Timeout")


def test_a_service_that_refuses_connections_is_503_with_retry_after(
    client: httpx.Client, proxies: dict[str, FaultProxy]
) -> None:
    proxies["similarity"].refuse()
    reply = client.get("/api/v1/similar/J%20Dilla")
    assert_error(reply, 503, "unavailable")
    assert reply.headers["retry-after"] == "1"
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["not_serving"] == ["similarity"]
    assert client.get("/api/v1/stats").status_code == 200, "the other services still answer"
    proxies["similarity"].resume()
    # The channel reconnects within its backoff (at most 2 s); until then calls fail fast.
    assert eventually(lambda: client.get("/api/v1/similar/J%20Dilla").status_code == 200)


def test_a_stalled_service_is_504_within_the_request_timeout(
    client: httpx.Client, proxies: dict[str, FaultProxy]
) -> None:
    proxies["analytics"].stall()
    reply = client.get("/api/v1/stats", headers={"X-Request-Timeout": "300ms"})
    assert_error(reply, 504, "deadline_exceeded")
    proxies["analytics"].resume()
    assert eventually(lambda: client.get("/api/v1/stats").status_code == 200)


@pytest.mark.parametrize("code", list(grpc.StatusCode))
def test_every_grpc_status_maps_to_a_documented_http_status(code: grpc.StatusCode) -> None:
    if code is grpc.StatusCode.OK:
        return
    error = grpc.aio.AioRpcError(
        code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details="secret internals",
        debug_error_string="",
    )
    mapped = from_rpc_error(error)
    assert mapped.status == HTTP_STATUS.get(code, 500)
    if mapped.status == 500:
        assert "secret" not in mapped.message and mapped.error == "internal"
    expected = {
        grpc.StatusCode.INVALID_ARGUMENT: 400,
        grpc.StatusCode.NOT_FOUND: 404,
        grpc.StatusCode.FAILED_PRECONDITION: 409,
        grpc.StatusCode.ABORTED: 409,
        grpc.StatusCode.UNAVAILABLE: 503,
        grpc.StatusCode.DEADLINE_EXCEEDED: 504,
        grpc.StatusCode.INTERNAL: 500,
        grpc.StatusCode.UNKNOWN: 500,
    }
    if code in expected:
        assert mapped.status == expected[code]
