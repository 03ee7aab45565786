"""A small TCP fault proxy between the agent and the broker (``tc netem`` is not available
here): pass traffic, stall it, refuse connections, cut them, or cut one mid-packet."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from tests.support import free_port


class FaultProxy:
    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target_port = target_port
        self.port = port or free_port()
        self.refusing = False
        self._cut_next_packet = False
        self._flowing: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._call(self._start())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(
            self._pump(reader, up_writer, upstream=True),
            self._pump(up_reader, writer, upstream=False),
            return_exceptions=True,
        )
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.transport.abort()

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, upstream: bool
    ) -> None:
        while True:
            data = await src.read(65536)
            if not data:
                break
            assert self._flowing is not None
            await self._flowing.wait()  # stalled: the link is up, but nothing gets through
            if upstream and self._cut_next_packet and len(data) > 1:
                self._cut_next_packet = False
                dst.write(data[: len(data) // 2])
                await dst.drain()
                self._abort_all()
                return
            dst.write(data)
            await dst.drain()
        dst.transport.abort()

    def _abort_all(self) -> None:
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    def stall(self) -> None:
        """Hold every byte in both directions; connections stay open."""
        assert self._flowing is not None
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def resume(self) -> None:
        assert self._flowing is not None
        self._loop.call_soon_threadsafe(self._flowing.set)

    def cut(self) -> None:
        """Close every connection at once, both directions, no goodbye."""
        self._loop.call_soon_threadsafe(self._abort_all)

    def cut_mid_packet(self) -> None:
        """Forward half of the next chunk the agent sends, then cut the connection."""
        self._cut_next_packet = True

    def close(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            self._abort_all()
            assert self._flowing is not None
            self._flowing.set()  # let stalled pumps see their aborted sockets and end
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self._call(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
