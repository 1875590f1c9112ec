"""Input rules shared by the services; each failure names the field and the rule."""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence

from shared.db.models import EMBEDDING_DIM
from shared.errors import InvalidArgument

NAME_MAX = 255


def artist_name(value: str, field: str = "artist_name") -> str:
    """Trimmed name, 1 to 255 characters; names differing only in outer whitespace are one."""
    name = value.strip()
    if not name:
        raise InvalidArgument(field, "must not be empty or only whitespace")
    if len(name) > NAME_MAX:
        raise InvalidArgument(field, f"must be at most {NAME_MAX} characters after trimming")
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
    if len(value) > max_length:
        raise InvalidArgument(field, f"must be at most {max_length} characters")
    return value
