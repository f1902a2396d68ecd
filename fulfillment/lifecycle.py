"""The order lifecycle as a table of allowed moves (pure).

received → allocated → planned → out_for_delivery → delivered | failed → reattempt | returned;
cancel releases reservations and is allowed until the van leaves. An allocation that finds
nothing leaves the order 'unallocated' (it may be allocated on a later run).
"""

from __future__ import annotations

ALLOWED: dict[str, frozenset[str]] = {
    "received": frozenset({"allocated", "unallocated", "cancelled"}),
    "unallocated": frozenset({"allocated", "unallocated", "cancelled", "received"}),
    "allocated": frozenset({"planned", "cancelled", "allocated"}),
    "planned": frozenset({"planned", "allocated", "out_for_delivery", "cancelled"}),
    "out_for_delivery": frozenset({"delivered", "failed"}),
    "failed": frozenset({"reattempt", "returned"}),
    "reattempt": frozenset({"planned", "out_for_delivery", "returned", "cancelled"}),
    "delivered": frozenset(),
    "returned": frozenset(),
    "cancelled": frozenset(),
}


def can_move(current: str, target: str) -> bool:
    return target in ALLOWED.get(current, frozenset())


def check_move(ref: str, current: str, target: str) -> None:
    """ValueError naming the order and both states when a move is not allowed."""
    if not can_move(current, target):
        allowed = ", ".join(sorted(ALLOWED.get(current, ()))) or "none"
        raise ValueError(f"order {ref} cannot go from {current} to {target} (allowed: {allowed})")
