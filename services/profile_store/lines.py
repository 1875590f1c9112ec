"""The line format of 'stylebase import' and 'stylebase export': one artist and its profile.

A JSON Lines file holds one ProfileLine object per line; a Parquet file one per row, with
the same column names. Only content is carried (no ids, versions or timestamps), so an export
imported into an empty database exports again to the same bytes.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from stylebase.common.v1 import common_pb2


class ProfileLine(BaseModel):
    """One line. Shapes only: the store's rules (validation.py) judge the values."""

    model_config = ConfigDict(extra="forbid")

    artist_name: str
    # artists.research_status: pending, researching, cached or failed.
    research_status: str = "cached"
    text_description: str = ""
    # QuantitativeParams by field name: tempo_min, tempo_max, tempo_avg, swing_percent, ...
    quantitative_params: dict[str, float] | None = None
    midi_templates: list[str] = Field(default_factory=list)
    # 384 floats, or empty for a profile that is not searchable.
    embedding: list[float] = Field(default_factory=list)
    confidence_score: float = 0.0
    # SourceCounts by field name: papers, articles, audio, midi.
    sources_count: dict[str, int] = Field(default_factory=dict)

    def to_proto(self) -> common_pb2.StyleProfile:
        """ValueError (with the field) for a key the messages do not have."""
        message = common_pb2.StyleProfile(
            artist_name=self.artist_name,
            text_description=self.text_description,
            midi_templates=self.midi_templates,
            embedding=self.embedding,
            confidence_score=self.confidence_score,
        )
        for field, value, target in (
            ("quantitative_params", self.quantitative_params, message.quantitative_params),
            ("sources_count", self.sources_count, message.sources_count),
        ):
            if value is None:
                continue
            target.SetInParent()
            for key, number in value.items():
                try:
                    setattr(target, key, number)
                except (AttributeError, TypeError, ValueError) as exc:
                    raise ValueError(f"{field}.{key}: {exc}") from None
        return message

    def dump(self) -> str:
        """The JSON line (no newline): keys in declaration order, floats as Python prints them."""
        return json.dumps(self.model_dump(), ensure_ascii=False, separators=(",", ":"))


def parse(text: str | bytes) -> ProfileLine:
    """pydantic.ValidationError or ValueError when the line is not a ProfileLine.

    Python's json reads NaN and Infinity, so such a value reaches the store's rules, which
    name the field, instead of failing as unreadable JSON.
    """
    data: Any = json.loads(text)
    return ProfileLine.model_validate(data)
