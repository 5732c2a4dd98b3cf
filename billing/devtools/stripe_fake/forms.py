"""Stripe's form encoding: `line_items[0][price_data][unit_amount]=999` into nested dicts/lists."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from billing.devtools.stripe_fake.errors import StripeApiError

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_PART = re.compile(r"\[([^\[\]]*)\]")


class _Indexed(dict[str, Any]):
    """A container first addressed as `[0]` or `[]`: becomes a list once parsing is done."""


def parse_form(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Parse decoded form pairs the way Stripe does; StripeApiError (400) when malformed."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        match = _KEY.match(key)
        if match is None:
            raise StripeApiError(400, f"Invalid parameter name: {key}", param=key)
        path = [match.group(1), *_PART.findall(match.group(2))]
        node: dict[str, Any] = root
        for depth, part in enumerate(path):
            last = depth == len(path) - 1
            if part == "":  # `expand[]=a&expand[]=b`: append
                part = str(len(node))
            if last:
                node[part] = value
                break
            child = node.get(part)
            if not isinstance(child, dict):
                following = path[depth + 1]
                child = _Indexed() if following == "" or following.isdigit() else {}
                node[part] = child
            node = child
    return _finish(root, "")


def _finish(node: dict[str, Any], where: str) -> Any:
    done = {k: _finish(v, f"{where}[{k}]" if where else k) if isinstance(v, dict) else v
            for k, v in node.items()}
    if not isinstance(node, _Indexed):
        return done
    if not all(k.isdigit() for k in done):
        raise StripeApiError(400, f"Invalid array: {where}", param=where)
    return [done[k] for k in sorted(done, key=int)]
