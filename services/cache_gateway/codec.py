"""How profiles are stored in Redis: serialized protobuf, zlib-compressed above a threshold."""

from __future__ import annotations

import zlib

from stylebase.common.v1 import common_pb2

_RAW = b"\x00"
_ZLIB = b"\x01"


def encode(profile: common_pb2.StyleProfile, *, compress_above: int) -> bytes:
    raw = profile.SerializeToString()
    if len(raw) > compress_above:
        packed = zlib.compress(raw, 6)
        # Embeddings barely compress; keep the raw form when zlib does not pay.
        if len(packed) < len(raw):
            return _ZLIB + packed
    return _RAW + raw


def decode(blob: bytes) -> common_pb2.StyleProfile:
    kind, body = blob[:1], blob[1:]
    if kind == _ZLIB:
        body = zlib.decompress(body)
    elif kind != _RAW:
        raise ValueError(f"unknown cache encoding {kind!r}")
    return common_pb2.StyleProfile.FromString(body)
