"""Opens N keep-alive TLS connections, one GET each (body read), and holds them idle.

    python3 bench/idle_conns.py HOST PORT CA_PEM PATH [N=10000] [HOLD_SECS=6]

Prints the number open once all are (the caller reads RSS after that), holds them for
HOLD_SECS, then sends a second GET on 200 of them and prints how many were answered 200:
an idle connection must still serve, parked or not.
"""
import asyncio
import ssl
import sys

host, port, ca, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
count = int(sys.argv[5]) if len(sys.argv) > 5 else 10000
hold = float(sys.argv[6]) if len(sys.argv) > 6 else 6
ctx = ssl.create_default_context(cafile=ca)
ctx.check_hostname = False
request = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


async def get(r, w):
    w.write(request)
    await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await r.readexactly(int(line.split(b":")[1]))
    return head


async def main():
    conns = []
    sem = asyncio.Semaphore(200)

    async def one():
        async with sem:
            r, w = await asyncio.open_connection(host, port, ssl=ctx)
            await get(r, w)
            conns.append((r, w))

    await asyncio.gather(*[one() for _ in range(count)], return_exceptions=True)
    print(len(conns), flush=True)
    await asyncio.sleep(hold)
    again = await asyncio.gather(*[get(r, w) for r, w in conns[:200]], return_exceptions=True)
    ok = sum(1 for h in again if isinstance(h, bytes) and h.startswith(b"HTTP/1.1 200"))
    print(f"{ok} of {min(200, len(conns))} served again after idling", file=sys.stderr, flush=True)


asyncio.run(main())
