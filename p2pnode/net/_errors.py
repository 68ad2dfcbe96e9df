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


@contextlib.contextmanager
def naming_bind_errors(what: str, flag: str) -> Iterator[None]:
    """A port that cannot be bound is a configuration problem: say which, and which flag changes it."""
    from p2pnode.errors import ConfigError

    try:
        yield
    except* OSError as group:
        exc = first_leaf(group)
        raise ConfigError(f"{what}: {getattr(exc, 'strerror', None) or exc}; choose another address with {flag}") from None


def first_leaf(error: BaseException) -> BaseException:
    """The first non-group exception inside (possibly nested) exception groups."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
