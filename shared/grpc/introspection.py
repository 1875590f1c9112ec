"""What a client can ask any Stylebase server about itself: health (Check, Watch and List)
and server reflection under both names clients use, grpc.reflection.v1 and v1alpha."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as reflection_v1alpha_pb2
from grpc_reflection.v1alpha import reflection_pb2_grpc as reflection_v1alpha_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
REFLECTION_V1ALPHA = reflection.SERVICE_NAME
# grpcio-reflection serves only v1alpha; v1 is the same protocol, field for field, under a
# new package, which newer clients (grpcurl 1.9+, buf curl, Postman) try first.
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


class Health(HealthServicer):  # type: ignore[misc]
    """grpcio-health-checking's servicer, with List (which it leaves UNIMPLEMENTED)."""

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthListResponse:
        # A snapshot: every name set so far, the overall "" and liveness included.
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in dict(self._server_status).items()
            }
        )


def enable_reflection(service_names: Sequence[str], server: grpc.aio.Server) -> None:
    """Reflection on both names, answered by one servicer: the messages of v1 and v1alpha
    are the same on the wire, so v1alpha's codecs serve v1 as they are."""
    names = [*service_names, REFLECTION_V1, REFLECTION_V1ALPHA]
    servicer = ReflectionServicer(names)
    reflection_v1alpha_grpc.add_ServerReflectionServicer_to_server(servicer, server)

    v1 = grpc.method_handlers_generic_handler(
        REFLECTION_V1,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                # The bound async generator itself: grpc.aio tells streaming handlers
                # apart by their function type, which a plain wrapper would hide.
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_v1alpha_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_v1alpha_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((v1,))
