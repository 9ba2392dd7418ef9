"""The fixed held-out part of every evaluation set.

Settings (tau, K, prompts, the predictor's tail risk) are chosen on the `dev` part; final tables are run on
the `heldout` part, which nothing is tuned on. An item's part is a function of its identity alone (a hash),
so it never depends on a seed, a limit or which sets a run includes. A jailbreak item is a template and a
request: it belongs to a part only when both do, so a held-out table sees neither a template nor a request
that settings were chosen with.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from typing import Final, Literal

Split = Literal["dev", "heldout"]
SPLITS: Final[tuple[Split, ...]] = ("dev", "heldout")
HELDOUT_SHARE: Final = 0.25


def _unit(key: str) -> float:
    """A number in [0, 1) fixed by `key`."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def part_of(key: str) -> Split:
    """The part of one item of a large set (about a quarter held out)."""
    return "heldout" if _unit(key) < HELDOUT_SHARE else "dev"


def parts_by_rank(names: Iterable[str], family: str) -> dict[str, Split]:
    """The parts of a small set (templates): exactly ceil(a quarter) held out, chosen by hash rank."""
    ordered = sorted(set(names), key=lambda name: _unit(f"{family}:{name}"))
    held_out = math.ceil(len(ordered) * HELDOUT_SHARE)
    return {name: ("heldout" if rank < held_out else "dev") for rank, name in enumerate(ordered)}


def common_part(parts: Sequence[Split]) -> Split | None:
    """The part all of an item's pieces share, or None when they do not."""
    return parts[0] if parts and all(part == parts[0] for part in parts) else None
