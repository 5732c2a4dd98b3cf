"""Calling the async use cases (those that wait on the payment provider) from plain tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def blocking(use_case: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, R]:
    """An async use case called like a function: each call runs to completion on a loop of its
    own (threads may call it at once, as the concurrency tests do)."""

    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        return asyncio.run(use_case(*args, **kwargs))

    return call
