"""The API under the faults production sends: SIGTERM with requests in flight, a service
killed and restarted, writes cut off mid-burst. Its own stack, so the kills touch no other test.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.faults.proxy import FaultProxy
from tests.harness import ServiceProcess
from tests.http_api.support import ApiProcess, Stack, start_services, wait_ready
from tests.otlp_spans import read_spans

BODY = {
    "artist_name": "J Dilla",
    "provider_used": "template",
    "generation_time_ms": 5,
    "user_params": {"bars": 4, "tempo": 90, "time_signature": "4/4", "variations": 1},
}


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("http_api_fault_logs")


@pytest.fixture(scope="module")
def faulty(api_env: dict[str, str], logs: Path, stack: Stack) -> Iterator[tuple[Stack, FaultProxy]]:
    """Services of its own (the session's stack has seeded the database they share), with
    similarity behind a proxy that can hold requests in flight."""
    env = {**api_env, "LOG_LEVEL": "INFO"}
    running = Stack(start_services(env, logs), ApiProcess(env={}))
    proxy = FaultProxy(running.services["similarity"].port).start()
    try:
        upstream = {f"{n.upper()}_TARGET": s.target for n, s in running.services.items()}
        upstream["SIMILARITY_TARGET"] = proxy.address
        # A drain long enough for a loaded machine to notice the closed listener first.
        drain_env = {**env, **upstream, "GRPC_GRACE_SECONDS": "5"}
        running.api = ApiProcess(env=drain_env, log_path=logs / "http_api.log").start()
        yield running, proxy
    finally:
        proxy.stop()
        running.stop()


async def listener_closes(url: str, *, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            async with httpx.AsyncClient(timeout=1) as fresh:
                await fresh.get(url)
        except httpx.ConnectError:
            return True
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.05)
    return False


def restart_api(running: Stack) -> None:
    if running.api.process is not None and running.api.process.poll() is None:
        return
    running.api = ApiProcess(
        env=running.api.env, port=running.api.port, log_path=running.api.log_path
    )
    running.api.start()


def test_sigterm_drains_the_requests_in_flight(faulty: tuple[Stack, FaultProxy]) -> None:
    running, proxy = faulty
    base = running.api.base_url
    assert httpx.get(f"{base}/api/v1/similar/J%20Dilla", timeout=10).status_code == 200

    async def scenario() -> tuple[list[int], bool]:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            proxy.stall()  # the next calls reach the service only once resumed
            in_flight = [
                asyncio.create_task(client.get("/api/v1/similar/J%20Dilla?limit=3"))
                for _ in range(8)
            ]
            await asyncio.sleep(0.5)
            assert running.api.process is not None
            running.api.process.send_signal(signal.SIGTERM)
            # While the 8 are still held: the listener closes (a draining server takes no
            # new connections), however long the signal takes to be handled here.
            refused = await listener_closes(f"{base}/healthz", within=20)
            proxy.resume()
            replies = await asyncio.gather(*in_flight, return_exceptions=True)
        statuses = [r.status_code if isinstance(r, httpx.Response) else -1 for r in replies]
        return statuses, refused

    try:
        statuses, refused = asyncio.run(scenario())
        assert running.api.process is not None
        code = running.api.process.wait(15)
        print(f"SIGTERM with 8 in flight: statuses {statuses}, exit {code}, new conn {refused}")
        assert statuses == [200] * 8
        assert refused, "a draining server takes no new connections"
        assert code == 0
    finally:
        proxy.resume()
        restart_api(running)


def test_a_killed_service_is_503_then_recovers(faulty: tuple[Stack, FaultProxy]) -> None:
    running, _ = faulty
    base = running.api.base_url
    similarity = running.services["similarity"]
    assert similarity.process is not None
    similarity.process.send_signal(signal.SIGKILL)
    similarity.process.wait(10)
    statuses = []
    for _ in range(10):
        reply = httpx.get(f"{base}/api/v1/similar/J%20Dilla", timeout=10)
        statuses.append(reply.status_code)
        if reply.status_code == 503:
            assert reply.headers["retry-after"] == "1"
            assert reply.json()["error"] == "unavailable"
    ready = httpx.get(f"{base}/readyz", timeout=10)
    restarted = ServiceProcess(
        "similarity", similarity.env, port=similarity.port, log_path=similarity.log_path
    )
    running.services["similarity"] = restarted.start()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        after = httpx.get(f"{base}/api/v1/similar/J%20Dilla", timeout=10).status_code
        if after == 200:
            break
        time.sleep(0.1)
    print(f"similarity killed: statuses {statuses}, readyz {ready.status_code}, then {after}")
    assert set(statuses) == {503}, "UNAVAILABLE, never INTERNAL"
    assert ready.status_code == 503 and "similarity" in ready.json()["not_serving"]
    assert after == 200


def test_no_acknowledged_generation_is_lost_when_analytics_dies(
    faulty: tuple[Stack, FaultProxy],
) -> None:
    running, _ = faulty
    base = running.api.base_url
    analytics = running.services["analytics"]

    async def burst() -> list[httpx.Response | BaseException]:
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            acknowledged = 0
            enough = asyncio.Event()

            async def one(i: int) -> httpx.Response:
                nonlocal acknowledged
                await asyncio.sleep(i * 0.02)
                reply = await client.post("/api/v1/generations", json=BODY)
                acknowledged += reply.status_code == 201
                if acknowledged >= 5:
                    enough.set()
                return reply

            tasks = [asyncio.create_task(one(i)) for i in range(60)]
            # The kill lands once some writes are acknowledged, however slow the machine.
            await asyncio.wait_for(enough.wait(), 30)
            assert analytics.process is not None
            analytics.process.send_signal(signal.SIGKILL)
            return await asyncio.gather(*tasks, return_exceptions=True)

    replies = asyncio.run(burst())
    running.services["analytics"] = ServiceProcess(
        "analytics", analytics.env, port=analytics.port, log_path=analytics.log_path
    ).start()
    statuses = [r.status_code if isinstance(r, httpx.Response) else -1 for r in replies]
    acknowledged = {
        r.json()["id"] for r in replies if isinstance(r, httpx.Response) and r.status_code == 201
    }
    wait_ready(base, running.api.process)  # type: ignore[arg-type]
    stored: set[str] = set()
    token = ""
    while True:
        params: dict[str, str | int] = {"limit": 100}
        if token:
            params["page_token"] = token
        page = httpx.get(f"{base}/api/v1/artists/J%20Dilla/history", params=params, timeout=10)
        stored.update(e["id"] for e in page.json()["history"])
        token = page.json()["next_page_token"]
        if not token:
            break
    counts = {s: statuses.count(s) for s in set(statuses)}
    print(f"analytics killed mid-burst: {counts}; acknowledged {len(acknowledged)}")
    assert set(statuses) <= {201, 503, 504}, counts
    assert 201 in counts and (503 in counts or 504 in counts), "the kill landed mid-burst"
    assert acknowledged <= stored, "every 201 is stored"


TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_the_request_id_and_trace_reach_the_services_logs(
    faulty: tuple[Stack, FaultProxy], logs: Path
) -> None:
    running, _ = faulty
    reply = httpx.post(
        f"{running.api.base_url}/api/v1/generations",
        json={**BODY, "artist_name": "Nobody At All"},
        headers={
            "X-Request-Id": "follow-me-7f3a",
            "traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01",
        },
        timeout=10,
    )
    assert reply.status_code == 404
    lines = [
        json.loads(line)
        for line in (logs / "analytics.log").read_text().splitlines()
        if line.startswith("{")
    ]
    mine = [line for line in lines if line.get("request_id") == "follow-me-7f3a"]
    assert mine, "the request id reached analytics"
    assert all(line.get("trace_id") == TRACE_ID for line in mine), mine


def test_with_tracing_on_each_request_is_one_trace_across_the_hop(
    faulty: tuple[Stack, FaultProxy], logs: Path
) -> None:
    running, _ = faulty
    spans_file = logs / "spans.jsonl"
    upstream = {f"{n.upper()}_TARGET": s.target for n, s in running.services.items()}
    traced = ApiProcess(
        env={
            **running.api.env,
            **upstream,
            "OTEL_TRACES_EXPORTER": "file",
            "STYLEBASE_TRACES_FILE": str(spans_file),
        },
        log_path=logs / "http_api_traced.log",
    ).start()
    try:
        reply = httpx.get(f"{traced.base_url}/api/v1/stats", timeout=10)
        assert reply.status_code == 200
    finally:
        traced.stop()
    spans = read_spans(spans_file)
    server = [s for s in spans if s["name"] == "GET /api/v1/stats"]
    client = [s for s in spans if s["name"].endswith("AnalyticsService/GetStats")]
    assert len(server) == 1 and len(client) == 1, [s["name"] for s in spans]
    assert server[0]["kind"] == "SERVER" and server[0]["parent_span_id"] is None
    assert client[0]["trace_id"] == server[0]["trace_id"]
