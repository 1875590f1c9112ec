"""Messages on the invalidation channel and the acknowledgements the store waits for."""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Drop:
    name: str
    version: int
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    # The store's inbox channel, where each gateway acknowledges once it has applied the drops.
    reply_to: str
    drops: list[Drop]

    def encode(self) -> str:
        rows = [[d.name, d.version, d.deleted] for d in self.drops]
        return json.dumps({"id": self.id, "a": self.reply_to, "e": rows})

    @staticmethod
    def decode(data: bytes | str) -> Message:
        body = json.loads(data)
        drops = [Drop(str(n), int(v), bool(d)) for n, v, d in body["e"]]
        return Message(str(body["id"]), str(body["a"]), drops)


def ack(message_id: str, member: str) -> str:
    return f"{message_id} {member}"


def parse_ack(data: bytes | str) -> tuple[str, str] | None:
    text = data.decode() if isinstance(data, bytes) else data
    message_id, _, member = text.partition(" ")
    return (message_id, member) if member else None
