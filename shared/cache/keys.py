"""The key layout shared by the profile store and the cache gateways.

Every key of one artist carries the same hash tag, so a script that touches them runs on
one Redis Cluster node. The tag is a digest of the name: braces or odd bytes in a name
cannot split an artist's keys across slots.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str

    @staticmethod
    def tag(name: str) -> str:
        return hashlib.sha1(name.encode(), usedforsecurity=False).hexdigest()[:16]

    def marker(self, name: str) -> str:
        """Newest version known committed; no TTL."""
        return f"{self.prefix}:{{{self.tag(name)}}}:m:{name}"

    def entry(self, name: str) -> str:
        """The cached copy: a hash of v (version), d (encoded profile), f (fetched at)."""
        return f"{self.prefix}:{{{self.tag(name)}}}:e:{name}"

    def artist(self, name: str) -> list[str]:
        """KEYS of the per-artist scripts: marker, then entry."""
        return [self.marker(name), self.entry(name)]

    @property
    def gateways(self) -> str:
        """Sorted set of connected gateways, scored by Redis's clock at their last heartbeat."""
        return f"{self.prefix}:gateways"

    @property
    def reads(self) -> str:
        """Sorted set of read counts of artists that exist (warm-up ranking)."""
        return f"{self.prefix}:reads"

    @property
    def channel(self) -> str:
        """Where the store publishes invalidations; every gateway subscribes."""
        return f"{self.prefix}:inv"

    def inbox(self, member: str) -> str:
        """A process's own channel: acknowledgements to the store, pings to a gateway."""
        return f"{self.prefix}:to:{member}"
