"""CPU per message of a gRPC client stream in Python, against a plain asyncio TCP stream.

Why this number: the peer transport (net/peer_transport.py) sends every Raft frame as one
message of a grpc.aio client stream, and profiles of a loaded node put the stream's write and
read among its largest costs. This isolates that cost from everything else a node does: one
process writes `--frames` messages of `--bytes` bytes, awaiting each write (as the transport's
sender does), the other reads them; each side reports the CPU it used (user + system).

    .venv/bin/python -m bench.grpc_stream_cost [--frames 20000] [--bytes 200]

Rows: grpc.aio client -> grpc.aio server (what the transport does), a sync-API client fed
from a queue -> grpc.aio server, and length-prefixed frames over an asyncio TCP connection.
Loopback only, two processes, uvloop on both sides.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import resource
import struct
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import grpc
import grpc.aio
import uvloop

SERVICE_METHOD = "/bench.Stream/Send"
_LENGTH = struct.Struct("<I")


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _summary(frames: int, started_cpu_s: float) -> bytes:
    return f"{frames} {cpu_s() - started_cpu_s:.6f}".encode()


async def grpc_server(announce: Callable[[int], None]) -> None:
    async def receive(requests: Any, _context: grpc.aio.ServicerContext) -> bytes:
        frames, started = 0, cpu_s()
        async for _ in requests:
            frames += 1
        return _summary(frames, started)

    handler = grpc.method_handlers_generic_handler(
        "bench.Stream", {"Send": grpc.stream_unary_rpc_method_handler(receive)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    announce(port)
    await server.wait_for_termination()


async def tcp_server(announce: Callable[[int], None]) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frames, started = 0, cpu_s()
        while size := _LENGTH.unpack(await reader.readexactly(_LENGTH.size))[0]:
            await reader.readexactly(size)
            frames += 1
        writer.write(_summary(frames, started))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    announce(server.sockets[0].getsockname()[1])
    await server.serve_forever()


async def grpc_aio_client(port: int, frames: int, payload: bytes) -> bytes:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await channel.channel_ready()
        call = channel.stream_unary(SERVICE_METHOD)()
        for _ in range(frames):
            await call.write(payload)
        await call.done_writing()
        answer: bytes = await call
        return answer


async def grpc_sync_client(port: int, frames: int, payload: bytes) -> bytes:
    """The sync API: a generator fed from a queue drives the stream in gRPC's own thread."""
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=10)
    feed: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()

    def requests() -> Iterator[bytes]:
        while (item := feed.get()) is not None:
            yield item

    future = channel.stream_unary(SERVICE_METHOD).future(requests())
    for _ in range(frames):
        feed.put(payload)
    feed.put(None)
    answer: bytes = await asyncio.to_thread(future.result)
    channel.close()
    return answer


async def tcp_client(port: int, frames: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    frame = _LENGTH.pack(len(payload)) + payload
    for _ in range(frames):
        writer.write(frame)
        await writer.drain()
        await asyncio.sleep(0)  # one loop iteration per frame, as the transport's sender
    writer.write(_LENGTH.pack(0))
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


Server = Callable[[Callable[[int], None]], Coroutine[Any, Any, None]]
Client = Callable[[int, int, bytes], Coroutine[Any, Any, bytes]]
ROWS: tuple[tuple[str, Server, Client], ...] = (
    ("grpc.aio stream (the transport)", grpc_server, grpc_aio_client),
    ("grpc sync-API client stream", grpc_server, grpc_sync_client),
    ("asyncio TCP, length-prefixed", tcp_server, tcp_client),
)


def run_row(server: Server, client: Client, frames: int, payload: bytes) -> tuple[float, ...]:
    """(sender CPU, receiver CPU, wall) in microseconds per frame; the server is a child."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the receiver
        os.close(read_end)

        def announce(port: int) -> None:
            os.write(write_end, f"{port}\n".encode())

        try:
            uvloop.run(server(announce))
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        port = int(os.read(read_end, 64).split()[0])
        started_cpu, started_wall = cpu_s(), time.perf_counter()
        answer = uvloop.run(client(port, frames, payload))
        sender_cpu, wall = cpu_s() - started_cpu, time.perf_counter() - started_wall
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(read_end)
    received, receiver_cpu = answer.decode().split()
    assert int(received) == frames, (received, frames)
    per = 1e6 / frames
    return sender_cpu * per, float(receiver_cpu) * per, wall * per


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--bytes", type=int, default=200, help="bytes per frame")
    arguments = parser.parse_args()
    payload = b"x" * arguments.bytes
    print(f"{arguments.frames} frames of {arguments.bytes} B, each write awaited")
    print(f"{'stream':34} {'sender cpu':>12} {'receiver cpu':>13} {'wall':>10}   (us per frame)")
    for label, server, client in ROWS:
        sender, receiver, wall = run_row(server, client, arguments.frames, payload)
        print(f"{label:34} {sender:12.1f} {receiver:13.1f} {wall:10.1f}")


if __name__ == "__main__":
    main()
