"""Opens N keep-alive TLS connections, one GET each (body read), and holds them idle.

    python3 bench/idle_conns.py HOST PORT CA_PEM PATH [N=10000] [HOLD_SECS=6] [h1|h2]

Prints the number open once all are (the caller reads RSS after that), holds them for
HOLD_SECS, then sends a second GET on 200 of them and prints how many were answered 200:
an idle connection must still serve, parked or not.

h2 speaks HTTP/2 (ALPN h2) with hand-built frames, enough for a GET: the preface, SETTINGS
(acknowledging the server's), one HEADERS frame per request with literal header fields, and
PING answers. No third-party package needed.
"""
import asyncio
import ssl
import struct
import sys

host, port, ca, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
count = int(sys.argv[5]) if len(sys.argv) > 5 else 10000
hold = float(sys.argv[6]) if len(sys.argv) > 6 else 6
proto = sys.argv[7] if len(sys.argv) > 7 else "h1"
ctx = ssl.create_default_context(cafile=ca)
ctx.check_hostname = False
if proto == "h2":
    ctx.set_alpn_protocols(["h2"])
request = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


async def get(r, w):
    w.write(request)
    await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await r.readexactly(int(line.split(b":")[1]))
    return head


def h2_frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def hpack_int(prefix, bits, value):
    top = (1 << bits) - 1
    if value < top:
        return bytes([prefix | value])
    out = [prefix | top]
    value -= top
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    return bytes(out + [value])


# :method GET, :scheme https (static table), :path and :authority as literals without indexing.
H2_HEADERS = (b"\x82\x87" + hpack_int(0x00, 4, 4) + hpack_int(0, 7, len(path)) + path.encode()
              + hpack_int(0x00, 4, 1) + b"\x01x")
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(4, 0, 0, b"")


class H2:
    """One HTTP/2 connection making one request at a time."""

    def __init__(self, r, w):
        self.r, self.w, self.buf, self.next_stream = r, w, b"", 1

    async def fill(self, size):
        while len(self.buf) < size:
            chunk = await self.r.read(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk

    async def frame(self):
        await self.fill(9)
        n = int.from_bytes(self.buf[:3], "big")
        await self.fill(9 + n)
        kind, flags = self.buf[3], self.buf[4]
        stream = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
        payload, self.buf = self.buf[9:9 + n], self.buf[9 + n:]
        return kind, flags, stream, payload

    async def get(self):
        """The response's first header byte: 0x88 is ":status 200" from the static table."""
        stream, self.next_stream = self.next_stream, self.next_stream + 2
        first = H2_PREFACE if stream == 1 else b""
        self.w.write(first + h2_frame(1, 0x5, stream, H2_HEADERS))  # END_STREAM | END_HEADERS
        await self.w.drain()
        status = None
        while True:
            kind, flags, sid, payload = await self.frame()
            if kind == 4 and not flags & 1:
                self.w.write(h2_frame(4, 1, 0, b""))  # SETTINGS ACK
            elif kind == 6 and not flags & 1:
                self.w.write(h2_frame(6, 1, 0, payload))  # PING ACK
            elif kind == 7:
                raise ConnectionError("GOAWAY")
            if sid == stream and kind == 1 and status is None:
                status = payload[:1]
            if sid == stream and kind in (0, 1) and flags & 1:
                await self.w.drain()
                return status


async def main():
    conns = []
    sem = asyncio.Semaphore(200)

    async def one():
        async with sem:
            r, w = await asyncio.open_connection(host, port, ssl=ctx)
            if proto == "h2":
                c = H2(r, w)
                await c.get()
                conns.append(c)
            else:
                await get(r, w)
                conns.append((r, w))

    await asyncio.gather(*[one() for _ in range(count)], return_exceptions=True)
    print(len(conns), flush=True)
    await asyncio.sleep(hold)
    if proto == "h2":
        again = await asyncio.gather(*[c.get() for c in conns[:200]], return_exceptions=True)
        ok = sum(1 for s in again if s == b"\x88")
    else:
        again = await asyncio.gather(*[get(r, w) for r, w in conns[:200]], return_exceptions=True)
        ok = sum(1 for h in again if isinstance(h, bytes) and h.startswith(b"HTTP/1.1 200"))
    print(f"{ok} of {min(200, len(conns))} served again after idling", file=sys.stderr, flush=True)


asyncio.run(main())
