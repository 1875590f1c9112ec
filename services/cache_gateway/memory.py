"""The in-process tier: a profile LRU bounded by entries and bytes, negatives, version floors."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from stylebase.common.v1 import common_pb2

# Floors are kept for artists without an entry too; this caps that map.
MAX_FLOORS = 200_000


@dataclass(slots=True)
class Entry:
    profile: common_pb2.StyleProfile
    version: int
    # Wall-clock time the copy was read from the store, for the age in responses.
    fetched_at: float
    # Monotonic time from which this copy reflects every write that had returned:
    # the start of the lookup that produced it.
    fresh_as_of: float
    size: int


@dataclass(slots=True)
class Negative:
    # The replica's floor for the artist when the store said NOT_FOUND.
    floor: int
    fresh_as_of: float
    # What the store said (e.g. artist or profile not found), to say it again.
    error: Exception | None = None


class MemoryTier:
    """Not thread-safe: used from the event loop only."""

    def __init__(self, *, max_entries: int, max_bytes: int, max_negatives: int = 10_000) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_negatives = max_negatives
        self.entries: OrderedDict[str, Entry] = OrderedDict()
        self.negatives: OrderedDict[str, Negative] = OrderedDict()
        # Newest version this replica has heard of per artist; copies below it are never served.
        self.floors: OrderedDict[str, int] = OrderedDict()
        self.bytes = 0
        # Bumped when the tier is flushed, so lookups begun before cannot fill after.
        self.epoch = 0

    def floor(self, name: str) -> int:
        return self.floors.get(name, 0)

    def get(self, name: str, required: int, now: float, max_age: float) -> Entry | None:
        entry = self.entries.get(name)
        if entry is None or entry.version < required or now - entry.fresh_as_of >= max_age:
            return None
        self.entries.move_to_end(name)
        return entry

    def peek(self, name: str, required: int) -> Entry | None:
        """Any copy at or above required, however old: the last resort while the store is down."""
        entry = self.entries.get(name)
        return entry if entry is not None and entry.version >= required else None

    def put(self, name: str, entry: Entry, epoch: int) -> bool:
        """Store a copy unless a flush or a newer version was seen since the lookup began."""
        if epoch != self.epoch or entry.version < self.floor(name):
            return False
        if entry.size > self.max_bytes:
            return False
        old = self.entries.get(name)
        if old is not None:
            if old.version > entry.version:
                return False
            self._remove(name)
        self.entries[name] = entry
        self.bytes += entry.size
        self.negatives.pop(name, None)
        while len(self.entries) > self.max_entries or self.bytes > self.max_bytes:
            self._remove(next(iter(self.entries)))
        return True

    def _remove(self, name: str) -> None:
        entry = self.entries.pop(name, None)
        if entry is not None:
            self.bytes -= entry.size

    def raise_floor(self, name: str, version: int) -> None:
        """An invalidation: drop every copy below version and any negative answer."""
        if version > self.floors.get(name, 0):
            self.floors[name] = version
            self.floors.move_to_end(name)
            while len(self.floors) > MAX_FLOORS:
                # An artist whose floor is forgotten must not keep a copy either.
                oldest = next(iter(self.floors))
                del self.floors[oldest]
                self._remove(oldest)
        entry = self.entries.get(name)
        if entry is not None and entry.version < version:
            self._remove(name)
        negative = self.negatives.get(name)
        if negative is not None and negative.floor < version:
            del self.negatives[name]

    def get_negative(self, name: str, required: int, now: float, max_age: float) -> Negative | None:
        negative = self.negatives.get(name)
        if negative is None or negative.floor < max(required, self.floor(name)):
            return None
        return negative if now - negative.fresh_as_of < max_age else None

    def put_negative(
        self,
        name: str,
        floor: int,
        fresh_as_of: float,
        epoch: int,
        error: Exception | None = None,
    ) -> bool:
        """Remember NOT_FOUND unless an invalidation (a creation) arrived during the lookup."""
        if epoch != self.epoch or floor < self.floor(name):
            return False
        self._remove(name)
        self.negatives[name] = Negative(floor, fresh_as_of, error)
        self.negatives.move_to_end(name)
        while len(self.negatives) > self.max_negatives:
            self.negatives.popitem(last=False)
        return True

    def clear(self) -> None:
        """Forget every copy (floors stay: they only ever rise)."""
        self.epoch += 1
        self.entries.clear()
        self.negatives.clear()
        self.bytes = 0
