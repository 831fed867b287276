"""A count of the hostile inputs the fuzz tests generated, printed at the end of a run."""

from __future__ import annotations

from collections import Counter

GENERATED: Counter[str] = Counter()
ACCEPTED: Counter[str] = Counter()


def count(target: str, *, accepted: bool = False) -> None:
    """Record one generated input for ``target``; ``accepted`` if it turned out valid."""
    GENERATED[target] += 1
    ACCEPTED[target] += accepted


def drain() -> dict[str, tuple[int, int]]:
    """``{target: (generated, accepted)}`` since the last call, then reset.

    The conftest attaches this to each test's report, so that the count reaches the
    controlling process when the suite runs on several pytest-xdist workers.
    """
    out = {t: (GENERATED[t], ACCEPTED[t]) for t in GENERATED}
    GENERATED.clear()
    ACCEPTED.clear()
    return out
