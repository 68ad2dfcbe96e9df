from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping


@contextlib.contextmanager
def map_exceptions(mapping: Mapping[type[BaseException], type[Exception]]) -> Iterator[None]:
    """Translate library exceptions into dcn's tree at the seam, chaining the original (httpcore's pattern)."""
    try:
        yield
    except Exception as exc:
        for source, target in mapping.items():
            if isinstance(exc, source):
                raise target(f"{type(exc).__name__}: {exc}") from exc
        raise
