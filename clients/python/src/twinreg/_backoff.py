"""Retry delays: exponential backoff with full jitter, and Retry-After when twinreg sends it."""

from __future__ import annotations

import random
from typing import Callable, Optional

from ._errors import TwinregError

BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0


class Backoff:
    """Exponential backoff with full jitter: attempt n waits a random delay in
    ``[0, min(cap, base * 2**n))``, so clients that failed together do not retry together."""

    def __init__(self, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP,
                 rng: Optional[Callable[[float, float], float]] = None):
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._uniform = rng or random.uniform

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        return min(self.cap, self.base * (2 ** self.attempt))

    def next(self) -> float:
        delay = self._uniform(0.0, self.ceiling())
        self.attempt = min(self.attempt + 1, 32)
        return delay

    def reset(self) -> None:
        self.attempt = 0


def retry_delay(err: BaseException, backoff: Backoff) -> float:
    """How long to wait before retrying after `err`: the ``Retry-After`` of a 429 or 503 when it
    came with one, else the next backoff delay (the backoff grows either way, for the case the
    header stops coming)."""
    delay = backoff.next()
    if (isinstance(err, TwinregError) and err.status in (429, 503)
            and err.retry_after is not None):
        return err.retry_after
    return delay
