"""Logs as operators read them: every line one JSON object under LOG_FORMAT=json (commands,
services, the HTTP API, tracebacks included) and the access lines of ACCESS_LOG."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import httpx
import pytest

from shared.db import migrate
from shared.embedded.ports import free_port
from shared.embedded.postgres import EmbeddedPostgres
from shared.settings import to_libpq_url
from stylebase.profile_store.v1 import profile_store_service_pb2 as store_pb
from stylebase.profile_store.v1 import profile_store_service_pb2_grpc as store_grpc
from tests.harness import ROOT, ServiceProcess, service_env

STORE = "/stylebase.profile_store.v1.ProfileStoreService"


def _env(**extra: str) -> dict[str, str]:
    """This process's environment without any logging or database settings of its own."""
    dropped = ("LOG_FORMAT", "LOG_LEVEL", "ACCESS_LOG", "DATABASE_URL", "POSTGRES_DATABASE_URL")
    return {**{k: v for k, v in os.environ.items() if k not in dropped}, **extra}


def _stylebase(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _json_lines(output: str) -> list[dict[str, Any]]:
    """Every non-empty line as a JSON object; fails naming the first line that is not one."""
    records = []
    for line in output.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}\nin:\n{output}")
        assert isinstance(record, dict), line
        records.append(record)
    return records


# ---------------------------------------------------------------- the stylebase command


def test_migrate_under_log_format_json_prints_only_json_lines(database_url: str) -> None:
    env = _env(POSTGRES_DATABASE_URL=database_url, LOG_FORMAT="json", LOG_LEVEL="INFO")
    result = _stylebase("migrate", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    records = _json_lines(result.stdout + result.stderr)
    assert [r["msg"] for r in records] == ["migrate to head done"], records
    assert records[0]["level"] == "INFO" and records[0]["service"] == "stylebase"


def test_migrate_at_a_terminal_prints_text_without_alembic_set_up_lines(database_url: str) -> None:
    result = _stylebase("migrate", env=_env(POSTGRES_DATABASE_URL=database_url))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = (result.stdout + result.stderr).splitlines()
    assert len(lines) == 1, lines
    assert " INFO stylebase stylebase: migrate to head done" in lines[0]
    assert "alembic" not in result.stderr


def test_migrate_log_level_warning_prints_nothing_on_success(database_url: str) -> None:
    env = _env(POSTGRES_DATABASE_URL=database_url, LOG_LEVEL="warning")
    result = _stylebase("migrate", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


def test_a_command_that_fails_unexpectedly_logs_one_json_line_with_the_traceback() -> None:
    # Nothing listens there: the connect fails inside alembic, where nothing catches it.
    url = f"postgresql+asyncpg://stylebase@127.0.0.1:{free_port()}/stylebase"
    result = _stylebase("migrate", env=_env(POSTGRES_DATABASE_URL=url, LOG_FORMAT="json"))
    assert result.returncode == 1, result.stdout + result.stderr
    records = _json_lines(result.stdout + result.stderr)
    assert len(records) == 1, records
    (record,) = records
    assert record["level"] == "CRITICAL" and record["msg"] == "uncaught exception"
    assert record["exc"].startswith("Traceback (most recent call last):")
    assert "ConnectionRefusedError" in record["exc"] or "OSError" in record["exc"]


def test_a_bad_log_format_is_refused_in_one_line() -> None:
    result = _stylebase("migrate", env=_env(LOG_FORMAT="xml"))
    assert result.returncode == 2
    assert result.stderr.startswith("stylebase migrate: invalid configuration:")
    assert "log_format" in result.stderr


PROBE = textwrap.dedent(
    """
    import logging, threading, warnings
    from shared.logging import configure_logging

    configure_logging("probe", "INFO", "json")
    log = logging.getLogger("probe")
    warnings.warn("an old knob", UserWarning)
    log.info("where am I", stack_info=True)
    try:
        {}["missing"]
    except KeyError:
        log.exception("lookup failed")

    def boom():
        raise RuntimeError("in a thread")

    thread = threading.Thread(target=boom, name="worker")
    thread.start()
    thread.join()
    raise ValueError("nobody caught me")
    """
)


def test_warnings_stacks_and_uncaught_exceptions_stay_one_json_line_each() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], env=_env(), cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 1
    records = _json_lines(result.stdout + result.stderr)
    by_msg = {r["msg"].splitlines()[0]: r for r in records}
    assert len(records) == 5, records
    warning = next(r for r in records if r["logger"] == "py.warnings")
    assert warning["level"] == "WARNING" and "UserWarning: an old knob" in warning["msg"]
    assert "test" not in by_msg["where am I"].get("exc", "")
    assert "File " in by_msg["where am I"]["stack"]
    assert "KeyError: 'missing'" in by_msg["lookup failed"]["exc"]
    thread = by_msg["uncaught exception in thread worker"]
    assert "RuntimeError: in a thread" in thread["exc"]
    uncaught = by_msg["uncaught exception"]
    assert uncaught["level"] == "CRITICAL" and "ValueError: nobody caught me" in uncaught["exc"]


# ---------------------------------------------------------------- a gRPC service


@pytest.fixture(scope="module")
def broken_database(postgres: EmbeddedPostgres) -> str:
    """A migrated database of its own whose research_sources table is gone: the store's
    listing of sources then fails with an error no code maps (a bug, as far as it knows)."""
    name = f"logs_{uuid.uuid4().hex[:8]}"
    parts = urlsplit(to_libpq_url(postgres.url))
    url = urlunsplit(parts._replace(path=f"/{name}"))

    async def prepare(statements: list[str], target: str) -> None:
        conn = await asyncpg.connect(target)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(prepare([f"CREATE DATABASE {name}"], to_libpq_url(postgres.url)))
    migrate.upgrade(url)
    asyncio.run(prepare(["ALTER TABLE research_sources RENAME TO research_sources_gone"], url))
    return url


@contextlib.contextmanager
def _artists_locked(database: str) -> Iterator[None]:
    """The artists table held under an ACCESS EXCLUSIVE lock: every read of it waits."""
    locked, release = threading.Event(), threading.Event()

    async def hold() -> None:
        conn = await asyncpg.connect(to_libpq_url(database))
        try:
            async with conn.transaction():
                await conn.execute("LOCK TABLE artists IN ACCESS EXCLUSIVE MODE")
                locked.set()
                await asyncio.to_thread(release.wait)
        finally:
            await conn.close()

    holder = threading.Thread(target=asyncio.run, args=(hold(),))
    holder.start()
    try:
        assert locked.wait(10)
        yield
    finally:
        release.set()
        holder.join(10)


def _calls(target: str, database: str) -> dict[str, str]:
    """One call of each outcome, each with its own request id; the id of each by its code."""
    ids = {code: f"logs-{code.lower()}-{uuid.uuid4().hex[:6]}" for code in CODES}
    artist = f"Logs Artist {uuid.uuid4().hex[:6]}"
    with grpc.insecure_channel(target) as channel:
        stub = store_grpc.ProfileStoreServiceStub(channel)

        def call(code: str, method: Any, request: Any, timeout: float = 10) -> None:
            metadata = (("x-request-id", ids[code]),)
            details = ""
            try:
                method(request, timeout=timeout, metadata=metadata)
                got = "OK"
            except grpc.RpcError as error:
                got, details = error.code().name, error.details() or ""
            assert got == code, details
            if code == "INTERNAL":
                # The caller is told where to look: the same id is in the server log.
                assert ids[code] in details

        call("OK", stub.GetOrCreateArtist, store_pb.GetOrCreateArtistRequest(name=artist))
        call("NOT_FOUND", stub.GetArtist, store_pb.GetArtistRequest(name=artist + " nobody"))
        call("INVALID_ARGUMENT", stub.GetArtist, store_pb.GetArtistRequest(id="not-a-uuid"))
        call(
            "INTERNAL",
            stub.ListResearchSources,
            store_pb.ListResearchSourcesRequest(artist_name=artist),
        )
        with _artists_locked(database):
            request = store_pb.GetArtistRequest(name=artist)
            call("DEADLINE_EXCEEDED", stub.GetArtist, request, timeout=0.5)
    return ids


CODES = ("OK", "NOT_FOUND", "INVALID_ARGUMENT", "INTERNAL", "DEADLINE_EXCEEDED")
METHODS = {
    "OK": f"{STORE}/GetOrCreateArtist",
    "NOT_FOUND": f"{STORE}/GetArtist",
    "INVALID_ARGUMENT": f"{STORE}/GetArtist",
    "INTERNAL": f"{STORE}/ListResearchSources",
    "DEADLINE_EXCEEDED": f"{STORE}/GetArtist",
}


def _run_store(database: str, log: Path, **extra: str) -> dict[str, str]:
    env = service_env(database, {"LOG_FORMAT": "json", "PROFILE_STORE_METRICS_PORT": "0", **extra})
    store = ServiceProcess("profile_store", env, log_path=log)
    try:
        store.start()
        ids = _calls(store.target, database)
    finally:
        assert store.stop() == 0
    return ids


def test_access_log_gives_one_json_line_per_rpc_with_its_code_and_request_id(
    broken_database: str, tmp_path: Path
) -> None:
    store_log = tmp_path / "profile_store.log"
    # LOG_LEVEL=WARNING (the harness's): asked for, the access lines come regardless.
    ids = _run_store(broken_database, store_log, ACCESS_LOG="true")
    records = _json_lines(store_log.read_text())
    access = [r for r in records if r["logger"] == "stylebase.access"]
    for code, request_id in ids.items():
        lines = [r for r in access if r.get("request_id") == request_id]
        assert len(lines) == 1, (code, access)
        (line,) = lines
        assert line["grpc_method"] == METHODS[code] and line["grpc_code"] == code
        assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
        assert line["peer"].startswith("ipv4:127.0.0.1:")
        assert line["msg"].startswith(f"{METHODS[code]} {code} ")
    # The health checks of the start-up wait are calls too, each with a line.
    assert any(r["grpc_method"] == "/grpc.health.v1.Health/Check" for r in access)


def test_an_unexpected_error_is_one_json_line_with_traceback_and_request_id(
    broken_database: str, tmp_path: Path
) -> None:
    store_log = tmp_path / "profile_store.log"
    ids = _run_store(broken_database, store_log)
    records = _json_lines(store_log.read_text())
    errors = [r for r in records if r["level"] == "ERROR"]
    assert len(errors) == 1, errors
    (error,) = errors
    assert error["msg"] == f"{METHODS['INTERNAL']} failed unexpectedly"
    assert error["request_id"] == ids["INTERNAL"]
    assert error["exc"].startswith("Traceback (most recent call last):")
    assert "research_sources" in error["exc"]
    # ACCESS_LOG unset: no access line at all.
    assert not [r for r in records if r["logger"] == "stylebase.access"]


# ---------------------------------------------------------------- the HTTP API


def test_http_api_access_log_replaces_uvicorns_and_every_line_is_json(tmp_path: Path) -> None:
    port = free_port()
    dead = f"127.0.0.1:{free_port()}"  # no service behind it: the API answers 503
    env = _env(
        HTTP_API_PORT=str(port),
        LOG_FORMAT="json",
        LOG_LEVEL="INFO",
        ACCESS_LOG="true",
        GRPC_GRACE_SECONDS="1",
        **{f"{s}_TARGET": dead for s in ("PROFILE_STORE", "SIMILARITY", "ANALYTICS")},
        CACHE_GATEWAY_TARGET=dead,
    )
    log = tmp_path / "http_api.log"
    base = f"http://127.0.0.1:{port}"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.http_api"], env=env, cwd=ROOT, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            try:
                httpx.get(f"{base}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        asked = {
            "/healthz": (200, "/healthz"),
            "/api/v1/artists/Nobody%20Here/profile": (
                None,
                "/api/v1/artists/{artist:name}/profile",
            ),
            "/no/such/page": (404, "unmatched"),
        }
        ids = {}
        for path, (status, _) in asked.items():
            ids[path] = f"logs-http-{uuid.uuid4().hex[:8]}"
            reply = httpx.get(f"{base}{path}", headers={"X-Request-Id": ids[path]}, timeout=10)
            if status is not None:
                assert reply.status_code == status
            asked[path] = (reply.status_code, asked[path][1])
    finally:
        process.terminate()
        process.wait(15)
    assert process.returncode == 0, log.read_text()
    records = _json_lines(log.read_text())
    assert any(r["logger"].startswith("uvicorn") for r in records), records
    access = [r for r in records if r["logger"] == "stylebase.access"]
    for path, (status, route) in asked.items():
        lines = [r for r in access if r.get("request_id") == ids[path]]
        assert len(lines) == 1, (path, access)
        (line,) = lines
        assert line["http_method"] == "GET" and line["http_status"] == status
        assert line["http_route"] == route, line
        assert line["http_path"] == path.replace("%20", " ")
        assert line["duration_ms"] >= 0 and line["peer"].startswith("127.0.0.1:")
    assert not [r for r in records if r["logger"] == "uvicorn.access"]
