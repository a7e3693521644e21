#!/usr/bin/env python3
"""A TCP proxy that delays every byte by DELAY_MS in each direction (a round trip of twice
that), for measuring round trips on loopback, where this kernel has no netem. Bandwidth
is not limited; order is kept; each connection gets its own pair of queues.

    delay_proxy.py DELAY_MS LISTEN_PORT:TARGET_PORT [...]

Listens on 127.0.0.1:LISTEN_PORT for each pair and forwards to 127.0.0.1:TARGET_PORT.
Prints "ready" once every port listens; runs until killed.

With UPLINK_MBPS set, the bytes every connection carries towards its target share one
budget of that many megabits per second: the deploying machine's uplink, when the
proxy stands between it and the hosts (answers coming back are not limited).

With TRACE=FILE set, every chunk is logged to FILE as it arrives: milliseconds since the
proxy started, the connection's number, its direction (> towards the target, < back) and
its length; where the round trips of a protocol go, read off the wire.
"""
import asyncio
import os
import signal
import socket
import sys


class Uplink:
    """One rate shared by every connection: each chunk waits for its turn on the wire."""

    def __init__(self, mbps):
        self.rate = mbps * 1e6 / 8
        self.free_at = 0.0

    async def send(self, n):
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.free_at = max(now, self.free_at) + n / self.rate
        await asyncio.sleep(self.free_at - now)


UPLINK = Uplink(float(os.environ["UPLINK_MBPS"])) if os.environ.get("UPLINK_MBPS") else None
TRACE = open(os.environ["TRACE"], "a", buffering=1) if os.environ.get("TRACE") else None


async def pipe(reader, writer, delay, uplink=None, trace=None):
    """Reads chunks as they come and writes each DELAY after it arrived (and after its
    turn on `uplink`, when given)."""
    loop = asyncio.get_running_loop()
    # Bounded: a slow uplink holds the sender back (as TCP would), not this memory.
    queue = asyncio.Queue(maxsize=256)

    async def read():
        while True:
            data = await reader.read(65536)
            if trace is not None:
                TRACE.write(f"{loop.time() * 1000 - START:10.1f} {trace} {len(data)}\n")
            await queue.put((loop.time() + delay, data))
            if not data:
                return

    async def write():
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            if uplink is not None:
                await uplink.send(len(data))
            writer.write(data)
            await writer.drain()

    # A connection reset ends both halves: the other is cancelled, not left pending.
    tasks = [asyncio.ensure_future(read()), asyncio.ensure_future(write())]
    try:
        await asyncio.gather(*tasks)
    except (ConnectionError, OSError):
        pass
    finally:
        for t in tasks:
            t.cancel()


async def serve(listen, target, delay):
    async def handle(client_r, client_w):
        global CONNECTIONS
        CONNECTIONS += 1
        number = CONNECTIONS
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            client_w.close()
            return
        for w in (client_w, server_w):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.gather(
                pipe(client_r, server_w, delay, UPLINK, TRACE and f"{number} >"),
                pipe(server_r, client_w, delay, None, TRACE and f"{number} <"),
            )
        except Exception:  # a connection torn down midway ends only itself
            pass
        for w in (client_w, server_w):
            w.close()

    return await asyncio.start_server(handle, "127.0.0.1", listen)


CONNECTIONS = 0
START = 0.0


async def main():
    global START
    START = asyncio.get_running_loop().time() * 1000
    delay = float(sys.argv[1]) / 1000
    servers = []
    for pair in sys.argv[2:]:
        listen, target = (int(p) for p in pair.split(":"))
        servers.append(await serve(listen, target, delay))
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    # Killed at the end of a benchmark: go at once, mid-connection or not.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    asyncio.run(main())
