"""Both ends of tests/websocket.rs, with the real `websockets` package (pinned in
tests/install-deps.sh).

  python3 websocket_peer.py server
      Serves WebSocket on 127.0.0.1 (a free port, printed as `PORT <n>`) until stdin closes.
      /echo echoes every message (text or binary); /server-close echoes one message, then
      closes with 1000 "bye"; /hold echoes and keeps the session open.
  python3 websocket_peer.py client URL SCENARIO [N] [HEADER=VALUE ...]
      Runs one scenario and prints one JSON line with what happened (`hold` first prints
      {"open": true} once its session is open). With WS_CA set, wss:// is verified against
      that CA file.
"""

import asyncio
import json
import os
import ssl
import sys
import time

from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed, InvalidStatus


async def handler(ws):
    path = ws.request.path.split("?")[0]
    try:
        async for message in ws:
            await ws.send(message)
            if path == "/server-close":
                await ws.close(1000, "bye")
                return
    except ConnectionClosed:
        pass


async def run_server():
    async with serve(handler, "127.0.0.1", 0, max_size=None, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"PORT {port}", flush=True)
        loop = asyncio.get_running_loop()
        # Runs until the test closes our stdin (or kills us).
        await loop.run_in_executor(None, sys.stdin.read)


def close_info(ws):
    return {"code": ws.close_code, "reason": ws.close_reason}


async def echo(url, headers):
    binary = bytes(range(256)) * 512  # 128 KiB, every byte value
    async with connect(url, additional_headers=headers, compression=None, max_size=None) as ws:
        await ws.send("hello")
        text = await ws.recv()
        await ws.send(binary)
        back = await ws.recv()
    return {"text": text, "binary_ok": back == binary, "binary_len": len(binary), **close_info(ws)}


async def server_close(url, headers):
    async with connect(url, additional_headers=headers, compression=None) as ws:
        await ws.send("x")
        first = await ws.recv()
        try:
            await ws.recv()
            ended = "message"
        except ConnectionClosed:
            ended = "closed"
    return {"first": first, "ended": ended, **close_info(ws)}


async def client_abort(url, headers):
    async with connect(url, additional_headers=headers, compression=None) as ws:
        await ws.send("x")
        first = await ws.recv()
        # The TCP connection goes away without a closing handshake (a tab killed).
        ws.transport.abort()
    return {"first": first}


async def concurrent(url, headers, n):
    async def one(i):
        async with connect(url, additional_headers=headers, compression=None) as ws:
            await ws.send(f"message {i}")
            return await ws.recv() == f"message {i}"

    results = await asyncio.gather(*(one(i) for i in range(n)))
    return {"ok": sum(results), "n": n}


async def hold(url, headers):
    started = time.monotonic()
    async with connect(url, additional_headers=headers, compression=None) as ws:
        await ws.send("x")
        first = await ws.recv()
        print(json.dumps({"open": True}), flush=True)
        try:
            await asyncio.wait_for(ws.recv(), 30)
            ended = "message"
        except ConnectionClosed:
            ended = "closed"
        except asyncio.TimeoutError:
            ended = "timeout"
    return {"first": first, "ended": ended, "seconds": time.monotonic() - started}


async def refused(url, headers):
    try:
        async with connect(url, additional_headers=headers):
            return {"status": 101}
    except InvalidStatus as e:
        return {"status": e.response.status_code}


def connect(url, **kwargs):
    if url.startswith("wss://"):
        kwargs["ssl"] = ssl.create_default_context(cafile=os.environ["WS_CA"])
    return ws_connect(url, **kwargs)


async def run_client(url, scenario, rest):
    n = int(rest[0]) if rest and rest[0].isdigit() else 1
    headers = dict(h.split("=", 1) for h in rest if "=" in h)
    if scenario == "echo":
        return await echo(url, headers)
    if scenario == "server-close":
        return await server_close(url, headers)
    if scenario == "client-abort":
        return await client_abort(url, headers)
    if scenario == "concurrent":
        return await concurrent(url, headers, n)
    if scenario == "hold":
        return await hold(url, headers)
    if scenario == "refused":
        return await refused(url, headers)
    raise SystemExit(f"unknown scenario {scenario}")


if __name__ == "__main__":
    if sys.argv[1] == "server":
        asyncio.run(run_server())
    else:
        result = asyncio.run(run_client(sys.argv[2], sys.argv[3], sys.argv[4:]))
        print(json.dumps(result), flush=True)
