"""Every RPC of every generated servicer is implemented by its service, or listed as pending."""

from __future__ import annotations

import importlib

import pytest

from shared.pending import PENDING_RPCS
from shared.settings import SERVICES

CLASS_NAMES = {
    "profile_store": "ProfileStore",
    "similarity": "Similarity",
    "analytics": "Analytics",
    "cache_gateway": "CacheGateway",
}


def _rpcs(service: str) -> tuple[type, type, list[str], str]:
    pb = importlib.import_module(f"stylebase.{service}.v1.{service}_service_pb2")
    pb_grpc = importlib.import_module(f"stylebase.{service}.v1.{service}_service_pb2_grpc")
    servicer_module = importlib.import_module(f"services.{service}.servicer")
    name = CLASS_NAMES[service]
    descriptor = pb.DESCRIPTOR.services_by_name[f"{name}Service"]
    base = getattr(pb_grpc, f"{name}ServiceServicer")
    impl = getattr(servicer_module, f"{name}Servicer")
    return base, impl, [m.name for m in descriptor.methods], descriptor.full_name


@pytest.mark.parametrize("service", SERVICES)
def test_every_rpc_is_implemented_or_pending(service: str) -> None:
    base, impl, methods, full_name = _rpcs(service)
    assert issubclass(impl, base)
    for method in methods:
        key = f"{full_name}/{method}"
        implemented = getattr(impl, method) is not getattr(base, method)
        if key in PENDING_RPCS:
            assert not implemented, f"{key} is implemented: remove it from shared.pending"
        else:
            assert implemented, f"{key} is neither implemented nor listed in shared.pending"


def test_pending_list_names_only_real_rpcs() -> None:
    real = set()
    for service in SERVICES:
        _, _, methods, full_name = _rpcs(service)
        real |= {f"{full_name}/{m}" for m in methods}
    assert set(PENDING_RPCS) <= real
