"""The stylebase-client channel's promises, against real gRPC servers on loopback that fail
on purpose: reads retried on UNAVAILABLE and writes not, default deadlines per kind of RPC,
x-request-id sent, round robin over every address of a target, mutual TLS."""

from __future__ import annotations

import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from stylebase.common.v1 import common_pb2
from stylebase.profile_store.v1 import profile_store_service_pb2 as ps
from stylebase_client import AsyncProfileStoreClient, Kind, ProfileStoreClient, Tls


@dataclass
class FlakyStore:
    """Answers UNAVAILABLE to the first `failures` calls of each RPC, then OK, and records
    each attempt's deadline and request id."""

    name: str
    failures: int = 0
    attempts: Counter[str] = field(default_factory=Counter)
    deadlines: list[float | None] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _attempt(self, rpc: str, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.attempts[rpc] += 1
            self.deadlines.append(context.time_remaining())
            metadata = dict(context.invocation_metadata())
            self.request_ids.append(str(metadata.get("x-request-id", "")))
            failing = self.attempts[rpc] <= self.failures
        if failing:
            context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")

    def GetArtist(
        self, request: ps.GetArtistRequest, context: grpc.ServicerContext
    ) -> ps.GetArtistResponse:
        self._attempt("GetArtist", context)
        return ps.GetArtistResponse(artist=common_pb2.Artist(name=self.name))

    def SaveStyleProfile(
        self, request: ps.SaveStyleProfileRequest, context: grpc.ServicerContext
    ) -> ps.SaveStyleProfileResponse:
        self._attempt("SaveStyleProfile", context)
        return ps.SaveStyleProfileResponse()


def _serve(
    servicer: FlakyStore, credentials: grpc.ServerCredentials | None = None
) -> tuple[grpc.Server, int]:
    def unary(method: Any, request: type[Message], response: type[Message]) -> Any:
        return grpc.unary_unary_rpc_method_handler(
            method,
            request_deserializer=request.FromString,
            response_serializer=response.SerializeToString,
        )

    handlers = {
        "GetArtist": unary(servicer.GetArtist, ps.GetArtistRequest, ps.GetArtistResponse),
        "SaveStyleProfile": unary(
            servicer.SaveStyleProfile, ps.SaveStyleProfileRequest, ps.SaveStyleProfileResponse
        ),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(ProfileStoreClient.SERVICE, handlers),)
    )
    port = (
        server.add_secure_port("127.0.0.1:0", credentials)
        if credentials is not None
        else server.add_insecure_port("127.0.0.1:0")
    )
    server.start()
    return server, port


@pytest.fixture
def flaky() -> Iterator[tuple[FlakyStore, str]]:
    servicer = FlakyStore("one", failures=2)
    server, port = _serve(servicer)
    yield servicer, f"127.0.0.1:{port}"
    server.stop(None)


def test_a_read_is_retried_on_unavailable(flaky: tuple[FlakyStore, str]) -> None:
    servicer, target = flaky
    with ProfileStoreClient(target) as client:
        reply = client.get_artist(ps.GetArtistRequest(name="x"))
    assert reply.artist.name == "one"
    assert servicer.attempts["GetArtist"] == 3


def test_a_write_is_not_retried(flaky: tuple[FlakyStore, str]) -> None:
    servicer, target = flaky
    with ProfileStoreClient(target) as client, pytest.raises(grpc.RpcError) as failed:
        client.save_style_profile(ps.SaveStyleProfileRequest())
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.attempts["SaveStyleProfile"] == 1


async def test_the_asyncio_client_retries_reads_only(flaky: tuple[FlakyStore, str]) -> None:
    servicer, target = flaky
    async with AsyncProfileStoreClient(target) as client:
        reply = await client.get_artist(ps.GetArtistRequest(name="x"))
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await client.save_style_profile(ps.SaveStyleProfileRequest())
    assert reply.artist.name == "one" and failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.attempts == Counter({"GetArtist": 3, "SaveStyleProfile": 1})


def test_each_kind_of_call_gets_its_default_deadline_and_the_request_id() -> None:
    servicer = FlakyStore("one")
    server, port = _serve(servicer)
    try:
        with ProfileStoreClient(f"127.0.0.1:{port}") as client:
            client.get_artist(ps.GetArtistRequest(name="x"), request_id="req-1")
            client.save_style_profile(ps.SaveStyleProfileRequest(), request_id="req-2")
            client.get_artist(ps.GetArtistRequest(name="x"), timeout=30)
    finally:
        server.stop(None)
    # gRPC rounds a timeout up when it sends it, so each bound has a second of slack.
    read, write, explicit = servicer.deadlines
    assert read is not None and write is not None and explicit is not None
    assert 0 < read <= Kind.READ.timeout + 1 < write <= Kind.WRITE.timeout + 1 < explicit <= 31
    assert servicer.request_ids == ["req-1", "req-2", ""]


def test_calls_spread_over_every_address_of_the_target() -> None:
    servicers = [FlakyStore("a"), FlakyStore("b")]
    servers = [_serve(s) for s in servicers]
    # One target naming both replicas, as DNS would with two A records.
    target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for _, port in servers)
    try:
        with ProfileStoreClient(target) as client:
            names = Counter(
                client.get_artist(ps.GetArtistRequest(name="x")).artist.name for _ in range(20)
            )
    finally:
        for server, _ in servers:
            server.stop(None)
    # Round robin alternates once both connections are up; pick_first would send all 20 to one.
    assert names["a"] >= 5 and names["b"] >= 5, names


SERVER_NAME = "profile-store.test"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for SERVER_NAME and a client certificate, signed by it."""
    folder = tmp_path_factory.mktemp("pki")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=stylebase test CA", cwd=folder)  # fmt: skip
    extensions = {
        "server": (SERVER_NAME, f"subjectAltName=DNS:{SERVER_NAME}"),
        "client": ("stylebase test client", "basicConstraints=CA:FALSE"),
    }
    for name, (cn, extension) in extensions.items():
        (folder / f"{name}.ext").write_text(extension + "\n")
        _openssl("req", "-new", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={cn}", cwd=folder)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
                 "-out", f"{name}.pem", cwd=folder)  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def mtls_target(pki: Path) -> Iterator[str]:
    credentials = grpc.ssl_server_credentials(
        [((pki / "server.key").read_bytes(), (pki / "server.pem").read_bytes())],
        root_certificates=(pki / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    server, port = _serve(FlakyStore("secure"), credentials)
    yield f"127.0.0.1:{port}"
    server.stop(None)


def test_mutual_tls_with_the_client_certificate(pki: Path, mtls_target: str) -> None:
    tls = Tls.from_files(
        ca=pki / "ca.pem", cert=pki / "client.pem", key=pki / "client.key", server_name=SERVER_NAME
    )
    with ProfileStoreClient(mtls_target, tls=tls) as client:
        assert client.get_artist(ps.GetArtistRequest(name="x")).artist.name == "secure"


def test_a_server_that_requires_a_client_certificate_refuses_one_without(
    pki: Path, mtls_target: str
) -> None:
    tls = Tls.from_files(ca=pki / "ca.pem", server_name=SERVER_NAME)
    with ProfileStoreClient(mtls_target, tls=tls) as client, pytest.raises(grpc.RpcError) as failed:
        client.get_artist(ps.GetArtistRequest(name="x"), timeout=5)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
