#!/usr/bin/env python3
"""A user-space delay line for TCP on loopback (the kernel here has no sch_netem).

Listens on 127.0.0.1:LISTEN and relays every connection to 127.0.0.1:TARGET, holding each chunk of
bytes for RTT/2 in each direction, so a request/response pair costs one round trip. The TCP
handshake's round trip is emulated too: bytes from the client are not released before one full
RTT after the connection was accepted (a real connect() returns after one RTT, so the first byte
a real client sends reaches the far end 1.5 RTT after it started). A new TLS 1.3 connection plus
one request therefore costs three round trips, as over a real link.

Only latency is emulated (no loss, no bandwidth limit). asyncio's timers wake up to 1 ms late
(epoll's timeout is in whole milliseconds), which would add ~1 ms to every round trip; with
--precise each chunk is awaited until 2 ms before it is due and the rest is slept in the loop
itself (sub-0.1 ms accurate, but it holds the loop: for one or a few busy connections at a time).

Usage: delay.py LISTEN TARGET RTT_MS [--precise]
"""
import asyncio
import sys
import time


PRECISE = False


async def pump(reader, writer, delay, not_before):
    """Copy reader -> writer; each chunk is written `delay` seconds after it was read (and not
    before `not_before`), in order."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def read_side():
        try:
            while True:
                data = await reader.read(65536)
                due = max(loop.time(), not_before) + delay
                await queue.put((due, data))
                if not data:
                    return
        except (ConnectionError, OSError):
            await queue.put((loop.time() + delay, b""))

    async def write_side():
        try:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    if PRECISE:
                        if wait > 0.002:
                            await asyncio.sleep(wait - 0.002)
                        rest = due - loop.time()
                        if rest > 0:
                            time.sleep(rest)
                    else:
                        await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            return

    await asyncio.gather(read_side(), write_side())


async def handle(client_reader, client_writer, target, rtt):
    loop = asyncio.get_running_loop()
    accepted = loop.time()
    half = rtt / 2
    try:
        # The far end sees the connection half a round trip after the client opened it.
        await asyncio.sleep(half)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
    except OSError:
        client_writer.close()
        return
    try:
        await asyncio.gather(
            pump(client_reader, up_writer, half, accepted + rtt),
            pump(up_reader, client_writer, half, 0.0),
        )
    finally:
        for w in (up_writer, client_writer):
            try:
                w.close()
            except OSError:
                pass


async def main():
    global PRECISE
    listen, target, rtt_ms = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    PRECISE = "--precise" in sys.argv[4:]
    rtt = rtt_ms / 1000.0
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, target, rtt), "127.0.0.1", listen, backlog=4096
    )
    print(f"delay line 127.0.0.1:{listen} -> 127.0.0.1:{target}, rtt {rtt_ms} ms", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
