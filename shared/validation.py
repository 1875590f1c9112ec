"""Input rules shared by the services; each failure names the field and the rule."""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Sequence

from shared.db.models import EMBEDDING_DIM
from shared.errors import InvalidArgument

NAME_MAX = 255
# C0 controls (tab and newline among them), DEL and C1 controls.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
NUL_RULE = "must not contain NUL (U+0000): PostgreSQL text cannot hold it"
CONTROL_RULE = "must not contain control characters (U+0000-U+001F, U+007F-U+009F)"
# The rules below are also declared in the HTTP API's OpenAPI schema: one place for both.
# An artist name as sent: no control characters and something besides whitespace.
NAME_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
PROVIDER_PATTERN = r"[a-z][a-z0-9_-]{0,49}"
TIME_SIGNATURE_PATTERN = r"([1-9]|[1-2][0-9]|3[0-2])/(1|2|4|8|16|32)"
BARS_RANGE = (1, 64)
TEMPO_BPM_RANGE = (20.0, 400.0)
VARIATIONS_RANGE = (1, 16)
MAX_OUTPUT_FILES = 64
MAX_PATH_LENGTH = 1024
# Inclusive bounds on a similarity filter's tempo.
FILTER_TEMPO_RANGE = (0.0, 1000.0)


def has_control(value: str) -> bool:
    return _CONTROL.search(value) is not None


def artist_name(value: str, field: str = "artist_name") -> str:
    """Trimmed name, 1 to 255 characters; names differing only in outer whitespace are one.

    A name is an identifier shown on one line, in lists and logs: inside it a tab, newline or
    other control character is a paste accident that makes two names look alike, so every
    control character is refused (NUL besides could not be stored at all).
    """
    name = value.strip()
    if not name:
        raise InvalidArgument(field, "must not be empty or only whitespace")
    if len(name) > NAME_MAX:
        raise InvalidArgument(field, f"must be at most {NAME_MAX} characters after trimming")
    if _CONTROL.search(name):
        raise InvalidArgument(field, CONTROL_RULE)
    return name


def embedding(values: Sequence[float], field: str = "embedding") -> list[float]:
    """Exactly 384 finite values with a non-zero norm."""
    if len(values) != EMBEDDING_DIM:
        raise InvalidArgument(field, f"must have exactly {EMBEDDING_DIM} values, got {len(values)}")
    out = [float(v) for v in values]
    for i, v in enumerate(out):
        if not math.isfinite(v):
            raise InvalidArgument(f"{field}[{i}]", "must be finite (no NaN or infinity)")
    if math.fsum(v * v for v in out) == 0.0:
        raise InvalidArgument(field, "must have a non-zero norm")
    return out


def bounded_int(value: int, field: str, *, default: int, low: int, high: int) -> int:
    """0 means the default; otherwise low..high inclusive."""
    if value == 0:
        return default
    if not low <= value <= high:
        raise InvalidArgument(field, f"must be between {low} and {high} (0 means {default})")
    return value


def page_size(value: int, field: str = "page_size", *, default: int = 20, high: int = 100) -> int:
    return bounded_int(value, field, default=default, low=1, high=high)


def uuid_value(value: str, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument(
            field, "must be a UUID like 123e4567-e89b-12d3-a456-426614174000"
        ) from None


def finite_in_range(value: float, field: str, low: float, high: float) -> float:
    if not math.isfinite(value):
        raise InvalidArgument(field, "must be finite")
    if not low <= value <= high:
        raise InvalidArgument(field, f"must be between {low:g} and {high:g}")
    return value


def bounded_text(value: str, field: str, max_length: int) -> str:
    """Free text (a description, notes): tabs and newlines belong there; NUL cannot be stored."""
    if len(value) > max_length:
        raise InvalidArgument(field, f"must be at most {max_length} characters")
    if "\x00" in value:
        raise InvalidArgument(field, NUL_RULE)
    return value


def single_line(value: str, field: str, max_length: int) -> str:
    """A URL, a path or a key: one line that no control character belongs in."""
    if len(value) > max_length:
        raise InvalidArgument(field, f"must be at most {max_length} characters")
    if _CONTROL.search(value):
        raise InvalidArgument(field, CONTROL_RULE)
    return value
