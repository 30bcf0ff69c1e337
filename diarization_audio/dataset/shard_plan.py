"""Which conversation goes in which shard: the shard index, the size bound and the rerun rules.

Pure bookkeeping, no file is read or written here. The index (shards/index.json) lists every
shard of a split in order with its conversations, each with its fingerprint, its bytes in the
tar and its duration. A rerun plans from it:

- a conversation no longer exported (erased, flagged, gone, moved to another split) leaves its
  shard; one that changed stays where it is (its shard is rewritten);
- a shard keeps its conversations while they fit the bound (a bound lowered since, or a
  conversation that grew, sends the rest of that shard to the end of the split);
- conversations to place fill the split's last shard while it has room, then new shards;
- a shard left empty goes, and the split's last shard takes its number, so a split's shards
  are always numbered 0..n-1 without a gap (what a brace pattern like
  shard-{000000..000009}.tar and NeMo's `shard_id` need).

So a shard is rewritten only when its list of conversations or one of their fingerprints
changed, and renamed only when a shard before it emptied.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

# What tarfile writes: 512-byte blocks, two zero blocks at the end, the whole padded to a
# record of 20 blocks.
BLOCK = 512
RECORD = 20 * BLOCK
INDEX_FORMAT = 1
_NAME = re.compile(r"^(train|development|test)/shard-(\d{6})$")


@dataclass(frozen=True)
class ShardBounds:
    """A shard closes before it would pass either bound (None: no bound of that kind); a
    conversation larger than the byte bound gets a shard of its own."""

    max_bytes: int | None = 1_000_000_000
    max_conversations: int | None = 1000


@dataclass(frozen=True)
class Member:
    """A conversation as a shard holds it: `size` is its bytes in the tar (headers and padding
    included) and `duration` its mixed audio's seconds; both exact once it has been written."""

    conversation_id: str
    fingerprint: str
    size: int
    duration: float


@dataclass(frozen=True)
class Shard:
    split: str
    number: int
    members: tuple[Member, ...]
    size: int = 0  # the tar's bytes
    complete: bool = True  # False: being rewritten when an export stopped

    @property
    def name(self) -> str:
        return f"{self.split}/shard-{self.number:06d}"

    @property
    def contents(self) -> tuple[tuple[str, str], ...]:
        return tuple((m.conversation_id, m.fingerprint) for m in self.members)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.contents).encode()).hexdigest()[:32]


def tar_size(member_sizes: Iterable[int]) -> int:
    """The bytes of a tar holding members of these sizes, end blocks and padding included."""
    blocks = sum(member_sizes) + 2 * BLOCK
    return -(-blocks // RECORD) * RECORD


class _Filling:
    """A shard being filled: its members and their bytes so far."""

    def __init__(self, bounds: ShardBounds) -> None:
        self.bounds, self.members, self.total = bounds, list[Member](), 0

    def fits(self, member: Member) -> bool:
        if not self.members:
            return True
        most_bytes, most_members = self.bounds.max_bytes, self.bounds.max_conversations
        return (most_members is None or len(self.members) < most_members) and (
            most_bytes is None or tar_size([self.total, member.size]) <= most_bytes
        )

    def add(self, member: Member) -> None:
        self.members.append(member)
        self.total += member.size


def plan_split(
    split: str, previous: Sequence[Shard], wanted: Sequence[Member], bounds: ShardBounds
) -> list[Shard]:
    """The shards of one split: `previous` as the index has them, `wanted` the conversations
    to export into the split, in the order they were stored."""
    by_id = {m.conversation_id: m for m in wanted}
    placed: set[str] = set()
    shards: dict[int, _Filling] = {}
    spilled: list[Member] = []
    for shard in sorted(previous, key=lambda s: s.number):
        filling = shards[shard.number] = _Filling(bounds)
        full = False  # once one does not fit, the rest of the shard moves on with it
        for old in shard.members:
            new = by_id.get(old.conversation_id)
            if new is None or old.conversation_id in placed:
                continue  # no longer in this split, or listed twice after an interruption
            placed.add(old.conversation_id)
            if new.fingerprint == old.fingerprint:
                new = old  # its measured size and duration
            full = full or not filling.fits(new)
            if full:
                spilled.append(new)
            else:
                filling.add(new)
    pending = spilled + [m for m in wanted if m.conversation_id not in placed]
    filled = [n for n in sorted(shards) if shards[n].members]
    current = filled[-1] if filled else None
    following = max(shards, default=-1) + 1
    for member in pending:
        if current is None or not shards[current].fits(member):
            current, following = following, following + 1
            shards[current] = _Filling(bounds)
        shards[current].add(member)
    numbers = sorted(n for n in shards if shards[n].members)
    kept = {n: shards[n] for n in numbers}
    while numbers and numbers[-1] >= len(numbers):  # a gap below the last shard: it moves there
        gap = min(set(range(len(numbers))) - set(numbers))
        kept[gap] = kept.pop(numbers[-1])
        numbers = sorted(kept)
    return [
        Shard(split, n, tuple(f.members), tar_size(m.size for m in f.members))
        for n, f in sorted(kept.items())
    ]


def index_bytes(shards: Sequence[Shard], bounds: ShardBounds) -> bytes:
    """shards/index.json: the bound the shards are filled to and every shard in order (its
    files' names relative to the shards folder; fingerprint null while it is being written)."""
    document = {
        "format": INDEX_FORMAT,
        "bounds": {"bytes": bounds.max_bytes, "conversations": bounds.max_conversations},
        "shards": [
            {"name": s.name, "split": s.split, "tar": f"{s.name}.tar",
             "manifest": f"{s.name}.jsonl", "bytes": s.size,
             "fingerprint": s.fingerprint if s.complete else None,
             "conversations": [{"id": m.conversation_id, "fingerprint": m.fingerprint,
                                "bytes": m.size, "duration": m.duration} for m in s.members]}
            for s in shards
        ],
    }  # fmt: skip
    return (json.dumps(document, indent=1) + "\n").encode()


def read_index(data: bytes | None) -> tuple[list[Shard], ShardBounds | None]:
    """The shards an index lists and the bound they were filled to; none for a missing or
    unreadable index (every shard is then written again, and files it does not list go)."""
    if data is None:
        return [], None
    try:
        document = json.loads(data)
        if document.get("format") != INDEX_FORMAT:
            return [], None
        limits = document["bounds"]
        bounds = ShardBounds(_whole(limits["bytes"]), _whole(limits["conversations"]))
        shards, names = [], set[str]()
        for entry in document["shards"]:
            match = _NAME.match(entry["name"])
            if match is None or match[1] != entry["split"] or entry["name"] in names:
                return [], None
            names.add(entry["name"])
            members = tuple(
                Member(str(c["id"]), str(c["fingerprint"]), int(c["bytes"]), float(c["duration"]))
                for c in entry["conversations"]
            )
            complete = entry["fingerprint"] is not None
            shards.append(Shard(match[1], int(match[2]), members, int(entry["bytes"]), complete))
        return shards, bounds
    except (ValueError, KeyError, TypeError, AttributeError):
        return [], None


def _whole(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"not a bound: {value!r}")
    return value


def marked_incomplete(shards: Sequence[Shard], names: set[str]) -> list[Shard]:
    return [replace(s, complete=False) if s.name in names else s for s in shards]
