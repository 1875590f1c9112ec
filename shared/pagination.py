"""Opaque page tokens: a base64url-encoded stylebase.common.v1.PageCursor.

A cursor holds the sort key of the last row returned, so pages stay stable while
rows are inserted; its filter hash stops a token being replayed on another query.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TypeVar

from google.protobuf.message import DecodeError

from shared import convert
from shared.errors import InvalidArgument
from stylebase.common.v1 import common_pb2

T = TypeVar("T")


def filter_hash(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def encode(
    *, after_id: str, filters: str, after_time: datetime | None = None, after_key: str = ""
) -> str:
    cursor = common_pb2.PageCursor(after_id=after_id, filter_hash=filters, after_key=after_key)
    if after_time is not None:
        cursor.after_time.FromDatetime(after_time)
    return base64.urlsafe_b64encode(cursor.SerializeToString()).decode().rstrip("=")


def decode(token: str, *, filters: str, field: str = "page_token") -> common_pb2.PageCursor | None:
    """None for an empty token (the first page)."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        cursor = common_pb2.PageCursor.FromString(raw)
    except (binascii.Error, ValueError, DecodeError):
        raise InvalidArgument(field, "is not a page token this service issued") from None
    if cursor.filter_hash != filters or not cursor.after_id:
        raise InvalidArgument(field, "belongs to a different query; start again without it")
    # The hash is no secret: a hand-made token may carry any instant.
    if cursor.HasField("after_time"):
        try:
            convert.from_timestamp(cursor.after_time)
        except InvalidArgument:
            raise InvalidArgument(field, "is not a page token this service issued") from None
    return cursor


def cut(
    rows: Sequence[T], limit: int, *, filters: str, key: Callable[[T], tuple[object, datetime]]
) -> tuple[list[T], str]:
    """A page from rows fetched with LIMIT limit + 1: the first limit rows, and the token of
    the next page (from key(last row) = (id, time)), or "" when this is the last one."""
    page = list(rows[:limit])
    if len(rows) <= limit:
        return page, ""
    after_id, after_time = key(page[-1])
    return page, encode(after_id=str(after_id), after_time=after_time, filters=filters)
