"""The floor: a minimal FastAPI + aiohttp proxy that parses nothing, forwards the body and relays the answer.

Copied from the shared gateway-overhead harness (`../shared/bench/naive_proxy_aiohttp.py`, the harness behind
issue #20's side-by-side figures), with type annotations. `bench/passthrough.py` runs it beside the gateway as
what a Python proxy costs at the least.

Run:  UPSTREAM=http://127.0.0.1:18000 uvicorn bench.floor_proxy:app --host 127.0.0.1 --port 18110 \
          --workers 1 --no-access-log --log-level warning
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

UPSTREAM = os.environ.get("UPSTREAM", "http://127.0.0.1:18000").rstrip("/")
HOP = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "accept-encoding"}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=256, ttl_dns_cache=300)
    app.state.session = aiohttp.ClientSession(
        UPSTREAM, connector=connector, auto_decompress=False, timeout=aiohttp.ClientTimeout(total=600)
    )
    yield
    await app.state.session.close()


app = FastAPI(lifespan=lifespan)


@app.api_route("/v1/{path:path}", methods=["GET", "POST"])
async def proxy(path: str, request: Request) -> Response:
    session: aiohttp.ClientSession = request.app.state.session
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
    up = await session.request(request.method, "/v1/" + path, headers=headers, data=await request.body())
    out_headers = {k: v for k, v in up.headers.items() if k.lower() not in HOP | {"content-encoding"}}
    if up.headers.get("content-type", "").startswith("text/event-stream"):
        return StreamingResponse(
            up.content.iter_any(),
            status_code=up.status,
            headers=out_headers,
            background=BackgroundTask(up.release),
        )
    body = await up.read()
    up.release()
    return Response(body, status_code=up.status, headers=out_headers)
