"""pgvector's binary wire format, registered on the store's connections so embeddings skip text."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

# pgvector's binary form: uint16 dimensions, uint16 unused, then big-endian float32 values.
_HEADER = struct.Struct(">HH")
_BIG_ENDIAN_F4 = np.dtype(">f4")


def encode(values: Sequence[float]) -> bytes:
    array = np.asarray(values, dtype=_BIG_ENDIAN_F4)
    return _HEADER.pack(len(array), 0) + array.tobytes()


def decode(data: bytes) -> list[float]:
    values: list[float] = np.frombuffer(data, dtype=_BIG_ENDIAN_F4, offset=_HEADER.size).tolist()
    return values


def _passthrough(value: Any) -> Any:
    return value


async def set_codec(connection: Any) -> None:
    """The same on one asyncpg connection of its own (the import's index work, the export)."""
    await connection.set_type_codec(
        "vector", schema="public", encoder=_passthrough, decoder=bytes, format="binary"
    )


def register_codec(engine: AsyncEngine) -> None:
    """Make every new connection of engine send and receive vectors as pre-encoded bytes.

    Only queries that pass bytes from encode() and read with decode() may touch vector
    columns through this engine (the ORM's Vector type speaks text).
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.run_async(set_codec)
