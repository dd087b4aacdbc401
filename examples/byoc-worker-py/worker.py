#!/usr/bin/env python3
"""A BYOC worker built on the unmodified PyPI package `pytrickle`.

Streams: pytrickle's own StreamServer serves `POST /stream/start|stop|params`,
`GET /stream/status` and `GET /health`; each video frame is inverted (negative image) with a
white square in the top-left corner so the output is easy to tell from the input.
The `effect` stream parameter ("invert", default; "flip": mirror horizontally; "none")
can be set in the start `params`, by `POST /stream/params`, or by a control-channel message.
When the orchestrator gives a `data_url`, one JSON record per 24 frames goes out on the data
channel (`{"frames": N, "effect": ..., "shape": [1, H, W, 3]}`, wrapped by pytrickle).

Batch (BYOC `POST /process/request/{route}` is forwarded to `POST {worker url}/{route}`):
  POST /uppercase   {"text": "abc"}  ->  {"text": "ABC", "length": 3}
  POST /echo        any body        ->  {"method", "path", "body", "json", "headers": {...}}

Start-up: binds --host/--port (port 0 picks a free port), optionally registers with an
orchestrator (`POST {orch}/capability/register`, header `Authorization: <secret>`), then
prints exactly one line `worker ready port=N` on stdout. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from typing import Any, Dict, Optional

import aiohttp
from aiohttp import web

from pytrickle import StreamProcessor, VideoFrame
from pytrickle.server import RouteConfig

log = logging.getLogger("byoc-worker")

EFFECTS = ("invert", "flip", "none")
DATA_EVERY = 24  # one data-channel record per 24 frames (pytrickle decodes at <= 24 fps by default)


class Effect:
    """The per-frame transform; cheap on CPU (a few vectorised tensor ops per frame)."""

    def __init__(self) -> None:
        self.effect = "invert"
        self.frames = 0
        self.processor: Optional[StreamProcessor] = None

    def apply_params(self, params: Optional[Dict[str, Any]]) -> None:
        if not params:
            return
        effect = params.get("effect")
        if effect is None:
            return
        effect = str(effect).lower()
        if effect not in EFFECTS:
            log.warning("unknown effect %r; keeping %r", effect, self.effect)
            return
        if effect != self.effect:
            log.info("effect %s -> %s", self.effect, effect)
        self.effect = effect

    async def on_start(self, params: Dict[str, Any]) -> None:
        self.frames = 0
        self.apply_params(params)
        log.info("stream started params=%s effect=%s", params, self.effect)

    async def on_stop(self) -> None:
        log.info("stream stopped after %d frames", self.frames)

    async def update(self, params: Dict[str, Any]) -> None:
        self.apply_params(params)

    async def video(self, frame: VideoFrame) -> VideoFrame:
        # pytrickle hands over a torch float tensor, shape [1, H, W, 3], RGB in [0, 1].
        self.frames += 1
        if self.processor is not None and self.frames % DATA_EVERY == 1:
            # Data channel: pytrickle batches these strings every ~333 ms and publishes one
            # trickle segment per batch holding `json.dumps([str, ...]) + "\n"`.
            await self.processor.send_data(
                json.dumps({"frames": self.frames, "effect": self.effect, "shape": list(frame.tensor.shape)})
            )
        t = frame.tensor
        if self.effect == "none":
            return frame
        if self.effect == "flip":
            out = t.flip(dims=[2])
        else:
            out = 1.0 - t
        h, w = out.shape[1], out.shape[2]
        s = max(4, min(h, w) // 8)
        out[:, :s, :s, :] = 1.0  # white marker square, top-left
        return frame.replace_tensor(out.contiguous())


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


async def handle_uppercase(request: web.Request) -> web.Response:
    raw = await request.read()
    data = _json_or_none(raw)
    if isinstance(data, dict) and isinstance(data.get("text"), str):
        text = data["text"]
    elif data is None and raw:
        text = raw.decode("utf-8", "replace")
    else:
        return web.json_response({"error": 'send {"text": "..."}'}, status=400)
    return web.json_response({"text": text.upper(), "length": len(text)})


async def handle_echo(request: web.Request) -> web.Response:
    raw = await request.read()
    keep = ("Authorization", "Content-Type", "X-Stream-Id", "Livepeer", "Content-Length")
    return web.json_response(
        {
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "body": raw.decode("utf-8", "replace"),
            "json": _json_or_none(raw),
            "headers": {k: request.headers[k] for k in keep if k in request.headers},
        }
    )


def token_middleware(token: str):
    """With --token, every POST must carry `Authorization: Bearer <token>` (go-livepeer
    forwards the token a worker registered; a 401 makes it drop the capability). GETs
    (/health, /version, /stream/status) stay open."""

    @web.middleware
    async def check(request: web.Request, handler):
        if request.method == "POST":
            if request.headers.get("Authorization", "") != f"Bearer {token}":
                return web.json_response({"error": "unauthorized"}, status=401)
        return await handler(request)

    return check


async def register(args: argparse.Namespace, url: str) -> None:
    body: Dict[str, Any] = {
        "name": args.name,
        "description": args.description,
        "url": url,
        "capacity": args.capacity,
        "price_per_unit": args.price,
        "price_scaling": args.price_scaling,
        "currency": args.currency,
    }
    if args.token:
        body["token"] = args.token
    target = args.orchestrator.rstrip("/") + "/capability/register"
    headers = {"Authorization": args.secret, "Content-Type": "application/json"}
    last = ""
    for attempt in range(1, args.register_retries + 1):
        try:
            async with aiohttp.ClientSession() as s:
                async with s.post(
                    target,
                    json=body,
                    headers=headers,
                    ssl=False,
                    timeout=aiohttp.ClientTimeout(total=5),
                ) as r:
                    text = await r.text()
                    if r.status == 200:
                        log.info("registered %s at %s: %s", args.name, target, text.strip())
                        return
                    last = f"{r.status} {text.strip()[:200]}"
                    if 400 <= r.status < 500:
                        raise SystemExit(f"registration refused: {last}")
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            last = repr(e)
        log.warning("register attempt %d failed: %s", attempt, last)
        await asyncio.sleep(1.0)
    raise SystemExit(f"registration failed after {args.register_retries} attempts: {last}")


async def reregister(args: argparse.Namespace, url: str) -> None:
    """Register again every --reregister-every seconds (an orchestrator drops a worker it cannot
    reach, and forgets registrations when it restarts); failures are only logged."""
    while True:
        await asyncio.sleep(args.reregister_every)
        try:
            await register(args, url)
        except SystemExit as e:
            log.warning("re-registration failed: %s", e.code)


async def main(args: argparse.Namespace) -> None:
    effect = Effect()
    middleware = [token_middleware(args.token)] if args.token else None
    processor = StreamProcessor(
        video_processor=effect.video,
        param_updater=effect.update,
        on_stream_start=effect.on_start,
        on_stream_stop=effect.on_stop,
        name=args.name,
        port=args.port,
        host=args.host,
        capability_name=args.name,
        middleware=middleware,
        custom_routes=[
            RouteConfig("POST", "/uppercase", handle_uppercase),
            RouteConfig("POST", "/echo", handle_echo),
        ],
    )
    effect.processor = processor
    server = processor.server
    # What StreamProcessor.run_forever does, minus its fixed port: start the aiohttp site
    # ourselves so that --port 0 works and the bound port can be reported.
    server.state.set_startup_complete()
    runner = await server.start_server()
    port = args.port
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            port = addr[1]
            break
    shown_host = "127.0.0.1" if args.host in ("0.0.0.0", "", "::") else args.host
    url = args.public_url or f"http://{shown_host}:{port}"
    log.info("listening on %s:%d (url %s)", args.host, port, url)

    if args.orchestrator:
        if not args.secret:
            raise SystemExit("--orchestrator needs --secret")
        await register(args, url)

    print(f"worker ready port={port}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    refresher = None
    if args.orchestrator and args.reregister_every > 0:
        refresher = asyncio.create_task(reregister(args, url))
    await stop.wait()
    log.info("shutting down")
    if refresher is not None:
        refresher.cancel()
    try:
        await asyncio.wait_for(server.stop(), timeout=10)
    except Exception as e:  # shutting down anyway
        log.warning("stop: %r", e)
    await runner.cleanup()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="bind port; 0 picks a free one (default 8000)")
    p.add_argument("--public-url", default="", help="URL the orchestrator should call (default http://HOST:PORT)")
    p.add_argument("--orchestrator", default="", help="orchestrator base URL to register with, e.g. http://127.0.0.1:8935")
    p.add_argument("--secret", default="", help="orchestrator secret (sent as the raw Authorization header)")
    p.add_argument("--name", default="pytrickle-invert", help="capability name (default pytrickle-invert)")
    p.add_argument("--description", default="pytrickle example: inverted video, /uppercase, /echo")
    p.add_argument("--capacity", type=int, default=1, help="pytrickle serves one stream at a time (default 1)")
    p.add_argument("--price", type=int, default=0, help="price_per_unit (per second of compute)")
    p.add_argument("--price-scaling", type=int, default=1)
    p.add_argument("--currency", default="WEI")
    p.add_argument("--token", default="", help="require `Authorization: Bearer TOKEN` on POSTs; sent as `token` when registering")
    p.add_argument("--register-retries", type=int, default=10, help="attempts, 1 s apart, before giving up (exit 1)")
    p.add_argument("--reregister-every", type=float, default=0, help="seconds between re-registrations (0: register once)")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


if __name__ == "__main__":
    a = parse_args()
    logging.basicConfig(
        level=getattr(logging, a.log_level.upper(), logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        asyncio.run(main(a))
    except SystemExit as e:
        if e.code not in (None, 0):
            log.error("%s", e.code)
            sys.exit(1)
