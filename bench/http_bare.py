"""The HTTP limit: a bare aiohttp app, one process, whose POST handler reads a ~2 KB JSON body,
checks its Stripe-style HMAC-SHA256 signature and answers 200. Nothing else: no database, no
logging, no metrics.

    python -m bench.http_bare PORT SECRET
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
import time

from aiohttp import web

TOLERANCE_S = 300


def make_app(secret: bytes) -> web.Application:
    async def webhook(request: web.Request) -> web.Response:
        body = await request.read()
        header = request.headers.get("Stripe-Signature", "")
        parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
        timestamp, signature = parts.get("t", ""), parts.get("v1", "")
        expected = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature) or not timestamp.isdigit() \
                or abs(time.time() - int(timestamp)) > TOLERANCE_S:
            return web.json_response({"error": "bad signature"}, status=400)
        event = json.loads(body)
        return web.json_response({"received": True, "type": event.get("type")})

    app = web.Application()
    app.router.add_post("/api/payment/webhook", webhook)
    return app


def main() -> None:
    port, secret = int(sys.argv[1]), sys.argv[2].encode()
    web.run_app(make_app(secret), host="127.0.0.1", port=port, print=None,
                access_log=None, handle_signals=True)


if __name__ == "__main__":
    main()
