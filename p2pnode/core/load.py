"""How busy a node is: active jobs against the backend's parallel capacity, and a moving average of response
times from real requests. Pure: the caller passes elapsed times in."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LoadTracker"]


@dataclass
class LoadTracker:
    capacity: int = 1  # jobs the local servers run at once
    alpha: float = 0.2  # weight of the newest sample in the moving average
    active: int = 0
    response_ms: float = 0.0  # exponentially weighted moving average; 0 until the first success
    completed: int = 0
    failed: int = 0

    @property
    def load(self) -> float:
        """0..1: the share of capacity in use (more jobs than slots still reads as 1)."""
        return min(1.0, self.active / max(self.capacity, 1))

    def start(self) -> None:
        self.active += 1

    def finish(self, elapsed_ms: float, *, ok: bool) -> None:
        self.active = max(0, self.active - 1)
        if not ok:
            self.failed += 1
            return
        self.completed += 1
        sample = max(0.0, elapsed_ms)
        self.response_ms = sample if self.completed == 1 else self.alpha * sample + (1 - self.alpha) * self.response_ms
