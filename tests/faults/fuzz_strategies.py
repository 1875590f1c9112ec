"""hypothesis strategies for any protobuf request, built from its message descriptor.

Every field is walked generically (so new fields and RPCs are covered without a change
here), with hostile values at each type's edges, plus a bias toward realistic values:
known artist names and valid templates of the common messages, so that some requests
get past validation into the database.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

F = FieldDescriptor
Draw = Callable[[st.SearchStrategy[Any]], Any]

INT_RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
}
INT_EDGES = (0, 1, -1, 2, 10, 20, 21, 64, 100, 101, 384, 1000, 1001, 2**31 - 1, 2**31, 2**53)
DOUBLE_EDGES = (
    math.nan,
    math.inf,
    -math.inf,
    -0.0,
    0.0,
    1.0,
    0.5,
    -1.0,
    120.0,
    1000.0,
    1000.0001,
    1e308,
    -1e308,
    5e-324,
    2.0**63,
)
FLOAT_EDGES = (math.nan, math.inf, -math.inf, -0.0, 0.0, 1.0, 0.5, -1.0, 3.4e38, 1e-45)
# Timestamp seconds: year 1 and year 9999 and one second past each, the epoch, int64's edges.
SECONDS_EDGES = (
    -62135596800,
    -62135596801,
    253402300799,
    253402300800,
    0,
    -1,
    1_767_225_600,
    2**63 - 1,
    -(2**63),
)
NANOS_EDGES = (0, 1, 999, 999_999_999, 1_000_000_000, -1, 2**31 - 1, -(2**31))
CONTROL = "\x00\x01\x07\t\n\r\x1b\x1f\x7f\x85\u2028\ufeff"
LONG_LENGTHS = (256, 1025, 2049, 20_001, 1_000_001)

# Characters a proto string can hold (valid UTF-8: no lone surrogates).
_unicode = st.characters(exclude_categories=["Cs"])


class Strategies:
    """Request strategies for one deployment: its known names and valid templates."""

    def __init__(
        self,
        known_names: Sequence[str],
        templates: Mapping[str, Sequence[Message]],
        *,
        long_strings: bool = True,
    ) -> None:
        self.known_names = list(known_names)
        self.templates = templates
        self.long_strings = long_strings
        self._cache: dict[str, st.SearchStrategy[Any]] = {}

    def text(self) -> st.SearchStrategy[str]:
        known = st.sampled_from(self.known_names)
        with_controls = st.builds(
            lambda a, c, b: a + c + b,
            st.sampled_from(["", *self.known_names]),
            st.text(st.sampled_from(CONTROL), min_size=1, max_size=3),
            st.text(_unicode, max_size=4),
        )
        options = [
            known,
            known,
            with_controls,
            st.text(_unicode, max_size=30),
            st.sampled_from(["", " ", "\x00", "  \t\n", "4/4", "template", "a" * 255]),
        ]
        if self.long_strings:
            options.append(
                st.builds(
                    lambda ch, n: ch * n,
                    st.sampled_from("a\x00é🎵 "),
                    st.sampled_from(LONG_LENGTHS),
                )
            )
        return st.one_of(*options)

    def scalar(self, field: FieldDescriptor) -> st.SearchStrategy[Any]:
        kind = field.type
        if kind in INT_RANGES:
            low, high = INT_RANGES[kind]
            edges = [v for e in INT_EDGES for v in (e, -e) if low <= v <= high]
            return st.one_of(
                st.sampled_from([low, high, *edges]),
                st.integers(low, high),
                st.integers(max(low, -5), min(high, 200)),
            )
        if kind == F.TYPE_DOUBLE:
            return st.one_of(st.sampled_from(DOUBLE_EDGES), st.floats(), st.floats(0, 1000))
        if kind == F.TYPE_FLOAT:
            return st.one_of(st.sampled_from(FLOAT_EDGES), st.floats(width=32))
        if kind == F.TYPE_BOOL:
            return st.booleans()
        if kind == F.TYPE_ENUM:
            assert field.enum_type is not None
            known = [v.number for v in field.enum_type.values]
            return st.one_of(st.sampled_from(known), st.integers(-(2**31), 2**31 - 1))
        if kind == F.TYPE_STRING:
            return self.text()
        if kind == F.TYPE_BYTES:
            return st.binary(max_size=64)
        raise AssertionError(f"no strategy for {field.full_name} (type {kind})")

    def value(self, field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        if field.message_type is not None:
            return self.message(field.message_type, depth + 1)
        return self.scalar(field)

    def message(self, descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
        key = f"{descriptor.full_name}@{min(depth, 3)}"
        if key not in self._cache:
            self._cache[key] = st.deferred(lambda: self._build(descriptor, depth))
        return self._cache[key]

    def _build(self, descriptor: Descriptor, depth: int) -> st.SearchStrategy[Message]:
        if descriptor.full_name == "google.protobuf.Timestamp":
            return self._timestamp(descriptor, SECONDS_EDGES)
        if descriptor.full_name == "google.protobuf.Duration":
            return self._timestamp(descriptor, (0, 1, -1, 315_576_000_000, 315_576_000_001))
        return st.composite(lambda draw: self._compose(draw, descriptor, depth))()

    def _timestamp(self, descriptor: Descriptor, seconds: Sequence[int]) -> st.SearchStrategy[Any]:
        cls = GetMessageClass(descriptor)
        return st.builds(
            lambda s, n: cls(seconds=s, nanos=n),
            st.one_of(st.sampled_from(seconds), st.integers(-(2**40), 2**40)),
            st.one_of(st.sampled_from(NANOS_EDGES), st.integers(0, 999_999_999)),
        )

    def _compose(self, draw: Draw, descriptor: Descriptor, depth: int) -> Message:
        message = GetMessageClass(descriptor)()
        templates = self.templates.get(descriptor.full_name)
        all_fields = list(descriptor.fields)
        if not all_fields:
            return message
        if templates and draw(st.integers(0, 2)) > 0:
            # A valid message with one or two fields made hostile: it gets furthest in.
            message.CopyFrom(draw(st.sampled_from(list(templates))))
            fields = draw(st.lists(st.sampled_from(all_fields), max_size=2, unique=True))
        elif depth > 3:
            return message
        else:
            fields = [f for f in all_fields if draw(st.booleans())]
        for field in fields:
            self._set(draw, message, field, depth)
        return message

    def _set(self, draw: Draw, message: Message, field: FieldDescriptor, depth: int) -> None:
        message.ClearField(field.name)
        target = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field = field.message_type.fields_by_name["key"]
            value_field = field.message_type.fields_by_name["value"]
            items = draw(
                st.dictionaries(self.scalar(key_field), self.value(value_field, depth), max_size=4)
            )
            for k, v in items.items():
                if value_field.type == F.TYPE_MESSAGE:
                    target[k].CopyFrom(v)
                else:
                    target[k] = v
            return
        if field.is_repeated:
            items = self._repeated(draw, field, depth)
            if field.type == F.TYPE_MESSAGE:
                for item in items:
                    target.add().CopyFrom(item)
            else:
                target.extend(items)
            return
        value = draw(self.value(field, depth))
        if field.type == F.TYPE_MESSAGE:
            target.CopyFrom(value)
        else:
            setattr(message, field.name, value)

    def _repeated(self, draw: Draw, field: FieldDescriptor, depth: int) -> list[Any]:
        element = self.value(field, depth)
        if draw(st.integers(0, 9)) == 0:
            # Counts at and past the limits (100 names, 384 dimensions, 1000 items): one
            # drawn element repeated keeps such a request cheap to build.
            count = draw(st.sampled_from([64, 65, 100, 101, 383, 384, 385, 1000, 1001]))
            item = draw(element)
            # ...within what one request can carry (gRPC's default cap is 4 MB).
            return [item] * min(count, max(1, 3_000_000 // _size(item)))
        return list(draw(st.lists(element, max_size=4 if depth < 2 else 2)))


def _size(value: Any) -> int:
    if isinstance(value, Message):
        return max(1, value.ByteSize())
    if isinstance(value, str):
        return max(1, len(value.encode()))
    return 8
