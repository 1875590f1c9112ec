"""'stylebase status' against the four services run as processes, then with one stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.embedded.redis import RedisServer
from shared.settings import SERVICES
from tests.harness import ROOT, ServiceProcess, service_env
from tests.http_api.support import start_api, start_services, targets


@pytest.fixture
def services(
    database_url: str, redis_server: RedisServer, tmp_path: Path
) -> Iterator[dict[str, ServiceProcess]]:
    env = service_env(
        database_url,
        {
            # Metrics off: the default ports may belong to a running stack.
            **{f"{s.upper()}_METRICS_PORT": "0" for s in SERVICES},
            "REDIS_URL": redis_server.url,
        },
    )
    processes = start_services(env, tmp_path)
    api = None
    try:
        api = start_api(env, targets(processes), tmp_path)
        yield {**processes, "http_api": api}
    finally:
        if api is not None:
            api.stop()
        for process in processes.values():
            process.stop()


def _status(processes: dict[str, ServiceProcess], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_TARGET")}
    env.update({f"{s.upper()}_PORT": str(p.port) for s, p in processes.items()})
    env["BACKUP_METRICS_PORT"] = "0"
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", "status", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_status_shows_every_service_serving_then_a_stopped_one_down(
    services: dict[str, ServiceProcess],
) -> None:
    up = _status(services, "--json")
    assert up.returncode == 0, up.stdout + up.stderr
    rows = {r["service"]: r for r in json.loads(up.stdout)["services"]}
    assert set(rows) == {*SERVICES, "http_api"}
    for service, process in services.items():
        assert rows[service]["health"] == "SERVING"
        assert rows[service]["address"] == process.target
        assert rows[service]["replica_lag"] == "n/a"
    assert "in use" in rows["profile_store"]["pool"]
    assert rows["cache_gateway"]["cache_hit_rate"].endswith("%")

    plain = _status(services)
    assert plain.returncode == 0
    assert plain.stdout.count("SERVING") == len(SERVICES) + 1

    services["analytics"].stop()
    down = _status(services, "--json")
    assert down.returncode == 1
    rows = {r["service"]: r for r in json.loads(down.stdout)["services"]}
    assert rows["analytics"]["health"] == "down"
    assert rows["analytics"]["reason"].startswith("UNAVAILABLE")
    assert rows["profile_store"]["health"] == "SERVING"
    # The HTTP API is up, but not ready without one of the services it calls.
    assert rows["http_api"]["health"] == "NOT_SERVING"
    assert "analytics" in rows["http_api"]["reason"]
    assert "down: analytics, http_api" in down.stderr
