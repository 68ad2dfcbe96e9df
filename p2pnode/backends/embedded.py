"""Placeholder until the embedded llama.cpp server lands: reports that it is not installed."""

from __future__ import annotations

from pathlib import Path


def bundled_model() -> Path | None:
    return None
