"""Whether batching windows of several cameras pays on this device: the camera hub's batch-size policy.

Batching helps when the engine's time per window falls with the batch size (a GPU, or a CPU with cores left idle
at batch 1); on a loaded CPU a batch of 4 can cost 4x one window, and then batching only adds waiting. ``"auto"``
measures: a warm-up and two timed calls (the faster counts) at batch 1 and at the largest batch when the hub starts,
then an exponential average of every call's time per window, batch 1 against larger batches, kept current while the
hub runs (while unbatched, one call in ``probe_every`` may take several windows to refresh the batched estimate).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import numpy as np

__all__ = ["BatchPolicy", "BATCHING_MODES"]

BATCHING_MODES = ("auto", "on", "off")
log = logging.getLogger(__name__)


class BatchPolicy:
    """The largest batch the hub may form next (:meth:`limit`), from ``mode``: ``on`` (always up to ``max_batch``),
    ``off`` (one window per call, unless the engine's smallest batch is larger) or ``auto`` (the cheaper per window,
    as measured). Thread-safe."""

    def __init__(
        self,
        mode: str,
        max_batch: int,
        min_batch: int = 1,
        alpha: float = 0.2,
        margin: float = 0.1,
        probe_every: int = 20,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if mode not in BATCHING_MODES:
            raise ValueError(f"batching: expected one of {BATCHING_MODES}, got {mode!r}")
        if not 0 < alpha <= 1 or not 0 <= margin < 1 or probe_every < 1:
            raise ValueError(
                f"alpha, margin, probe_every: expected (0, 1], [0, 1), >= 1; got {alpha}, {margin}, {probe_every}"
            )
        self.mode, self.max_batch, self.min_batch = mode, max_batch, min_batch
        self.alpha, self.margin, self.probe_every, self.clock = alpha, margin, probe_every, clock
        self._lock = threading.Lock()
        self.per_window_s: dict[str, float | None] = {"single": None, "batched": None}  # exponential averages
        self.start: dict[str, float] | None = None  # the measurement at start, seconds per window
        self._since_probe = 0
        fixed = max_batch <= 1 or min_batch > 1 or mode != "auto"
        # an engine whose smallest batch is over 1 pads every call anyway: filling it costs nothing (unless "off")
        self.batched = (mode == "on" or (min_batch > 1 and mode == "auto")) if fixed else True
        self.reason = (
            "the engine takes one batch size only"
            if max_batch <= 1 or min_batch >= max_batch
            else f"batching={mode}"
            if mode != "auto"
            else "not measured yet"
        )
        self.needs_measuring = not fixed

    def measure(self, infer: Callable[[np.ndarray], Any], batch: np.ndarray) -> None:
        """The start measurement (``batch`` holds at least ``max_batch`` clips; their values do not matter)."""

        def timed(n: int) -> float:
            t0 = self.clock()
            infer(batch[:n])
            return self.clock() - t0

        timed(1)  # warm-up: first-call allocations and plan selection
        single = min(timed(1), timed(1))
        timed(self.max_batch)
        batched = min(timed(self.max_batch), timed(self.max_batch)) / self.max_batch
        with self._lock:
            self.start = {"single_ms": single * 1e3, "batched_ms_per_window": batched * 1e3, "batch": self.max_batch}
            self.per_window_s = {"single": single, "batched": batched}
            self.needs_measuring = False
            self._decide()
        log.info("runtime.hub: batching %s (%s)", "on" if self.batched else "off", self.reason)

    def observe(self, n: int, seconds: float) -> None:
        """One engine call of ``n`` windows took ``seconds``: update the averages and the choice."""
        if self.mode != "auto" or self.needs_measuring or n < 1:
            return
        key = "single" if n == 1 else "batched"
        with self._lock:
            old = self.per_window_s[key]
            per = seconds / n
            self.per_window_s[key] = per if old is None else self.alpha * per + (1 - self.alpha) * old
            was = self.batched
            self._decide()
        if was != self.batched:
            log.info("runtime.hub: batching %s (%s)", "on" if self.batched else "off", self.reason)

    def _decide(self) -> None:
        single, batched = self.per_window_s["single"], self.per_window_s["batched"]
        if single is None or batched is None:
            return
        self.batched = batched < single * (1 - self.margin)
        self.reason = (
            f"{batched * 1e3:.1f} ms per window batched vs {single * 1e3:.1f} ms alone on this device: "
            f"batching {'saves' if self.batched else 'does not save'} at least {self.margin:.0%}"
        )

    def limit(self, pending: int) -> int:
        """The largest batch for the next call, with ``pending`` windows waiting."""
        with self._lock:
            if self.batched or self.needs_measuring:
                return self.max_batch
            self._since_probe += 1
            if self.mode == "auto" and pending > 1 and self._since_probe >= self.probe_every:
                self._since_probe = 0  # refresh the batched estimate now and then
                return self.max_batch
            return max(1, self.min_batch)

    def describe(self) -> dict[str, Any]:
        with self._lock:
            ms = {k: (None if v is None else v * 1e3) for k, v in self.per_window_s.items()}
            return {
                "mode": self.mode,
                "batched": self.batched,
                "reason": self.reason,
                "max_batch": self.max_batch,
                "per_window_ms": ms,
                "measured_at_start": self.start,
            }
