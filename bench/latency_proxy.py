#!/usr/bin/env python3
"""A TCP proxy on loopback that delays each direction by a fixed time without capping bandwidth.

  bench/latency_proxy.py LISTEN_PORT TARGET_HOST:TARGET_PORT ONE_WAY_MS

Every chunk read from one side is written to the other ONE_WAY_MS after it arrived, in order:
a request/answer exchange costs 2 x ONE_WAY_MS more (one round trip), a stream keeps its rate.
Prints "ready" once listening. Loopback only.
"""
import asyncio
import sys
import time


async def pipe(reader, writer, delay):
    queue = asyncio.Queue()

    async def send():
        while True:
            due, data = await queue.get()
            if data is None:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        try:
            writer.write_eof()
        except (OSError, RuntimeError):
            pass

    task = asyncio.create_task(send())
    try:
        while True:
            data = await reader.read(256 * 1024)
            if not data:
                break
            queue.put_nowait((time.monotonic() + delay, data))
    except OSError:
        pass
    queue.put_nowait((time.monotonic() + delay, None))
    try:
        await task
    except OSError:
        pass


async def main():
    port = int(sys.argv[1])
    host, tport = sys.argv[2].rsplit(":", 1)
    delay = float(sys.argv[3]) / 1000.0
    assert host in ("127.0.0.1", "localhost"), "loopback only"

    async def handle(cr, cw):
        try:
            sr, sw = await asyncio.open_connection(host, int(tport))
        except OSError:
            cw.close()
            return
        await asyncio.gather(pipe(cr, sw, delay), pipe(sr, cw, delay))
        for w in (cw, sw):
            w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
