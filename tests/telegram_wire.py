"""The fake Telegram server (tests/telegram_server.py) for a daemon in another process.

The test process serves its `TelegramServer` on a Unix socket (`serve`); the daemon, started by
tests/daemon_launcher.py with FA_TELEGRAM_SERVER=<socket>, builds real TelegramClients whose
sender is a `RemoteSender` that carries the very bytes a real sender would encrypt: the
request's TL serialisation one way, the answer's (or an error's code and message, or an
update's bytes) the other. The world stays in the test process, so the daemon can be killed
with -9 at any moment and a new one started against the same Telegram.

Frames: 4-byte little-endian length, then one kind byte, an 8-byte request id and a body.
  client -> server  b"H" hello (body: the session's auth key), b"R" request (TL bytes)
  server -> client  b"A" answer (TL bytes), b"E" error (4-byte code + message),
                    b"C" the connection broke for this request, b"U" update (TL bytes)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import struct
from pathlib import Path
from typing import Any

from telethon import TelegramClient, errors, types
from telethon.crypto import AuthKey
from telethon.extensions import BinaryReader
from telethon.network.mtprotosender import MTProtoSender

from telegram_server import API_HASH, API_ID, RpcFailure, TelegramServer, _Hang, encode_result


async def _read(reader: asyncio.StreamReader) -> tuple[bytes, int, bytes]:
    (length,) = struct.unpack("<I", await reader.readexactly(4))
    frame = await reader.readexactly(length)
    return frame[:1], struct.unpack("<q", frame[1:9])[0], frame[9:]


def _frame(kind: bytes, ident: int, body: bytes) -> bytes:
    return struct.pack("<I", 9 + len(body)) + kind + struct.pack("<q", ident) + body


# --- the server side ------------------------------------------------------------------------------


class _Connection:
    """One client connection, registered with the server for its account's updates."""

    def __init__(self, server: TelegramServer, writer: asyncio.StreamWriter, auth_key: bytes):
        self.server = server
        self.writer = writer
        self.key_id = AuthKey(auth_key).key_id

    @property
    def phone(self) -> str | None:
        return next((p for p, a in self.server.accounts.items() if self.key_id in a.auth_keys), None)

    def push(self, updates: Any) -> None:
        if not self.writer.is_closing():
            self.writer.write(_frame(b"U", 0, bytes(updates)))

    async def answer(self, ident: int, data: bytes) -> None:
        try:
            result = await self.server.handle(self.phone, BinaryReader(data).tgread_object())
        except RpcFailure as exc:
            self.writer.write(_frame(b"E", ident, struct.pack("<i", exc.code) + exc.message.encode()))
            return
        except ConnectionError:
            self.writer.write(_frame(b"C", ident, b""))
            return
        except _Hang:
            return
        except Exception as exc:   # a bug of the fake: the daemon hears a server error at once
            # (not a hang until its timeout), and the test fails when the world closes
            self.server.bugs.append(f"{exc!r} answering {data[:4].hex()}")
            exc = RpcFailure(500, "FAKE_SERVER_BUG")
            self.writer.write(_frame(b"E", ident, struct.pack("<i", exc.code) + exc.message.encode()))
            return
        self.writer.write(_frame(b"A", ident, encode_result(result)))


async def serve(server: TelegramServer, path: str | Path) -> asyncio.AbstractServer:
    """Serve `server` on the Unix socket `path` (close the returned server when done)."""
    tasks: set[asyncio.Task] = set()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = None
        try:
            kind, _, key = await _read(reader)
            assert kind == b"H"
            connection = _Connection(server, writer, key)
            if connection.phone:
                server.senders.setdefault(connection.phone, set()).add(connection)
            while True:
                kind, ident, body = await _read(reader)
                task = asyncio.create_task(connection.answer(ident, body))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass   # the daemon went away (kill -9 included)
        finally:
            for senders in server.senders.values():
                senders.discard(connection)
            writer.close()

    return await asyncio.start_unix_server(on_client, path=str(path))


# --- the daemon side ------------------------------------------------------------------------------


class RemoteSender(MTProtoSender):
    """An MTProtoSender whose network is a Unix socket to `serve`."""

    def __init__(self, path: str, auth_key: Any, *, loggers: Any, updates_queue: asyncio.Queue,
                 auto_reconnect_callback: Any = None):
        super().__init__(auth_key, loggers=loggers, updates_queue=updates_queue,
                         auto_reconnect_callback=auto_reconnect_callback)
        self.path = path
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[Any, asyncio.Future]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task | None = None
        self._done: asyncio.Future | None = None

    async def connect(self, connection: Any) -> bool:
        if self._user_connected:
            return False
        reader, self._writer = await asyncio.open_unix_connection(self.path)
        self._writer.write(_frame(b"H", 0, self.auth_key.key or b""))
        self._connection = connection
        self._user_connected = True
        self._done = asyncio.get_running_loop().create_future()
        self._reader_task = asyncio.create_task(self._receive(reader))
        return True

    def is_connected(self) -> bool:
        return self._user_connected

    async def disconnect(self) -> None:
        if not self._user_connected:
            return
        self._user_connected = False
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task
        if self._writer is not None:
            self._writer.close()
        for _, future in self._waiting.values():
            if not future.done():
                future.set_exception(ConnectionError("disconnected"))
        self._waiting.clear()
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    @property
    def disconnected(self):
        if self._done is None:
            future = asyncio.get_running_loop().create_future()
            future.set_result(None)
            return future
        return asyncio.shield(self._done)

    def send(self, request: Any, ordered: bool = False):
        if not self._user_connected:
            raise ConnectionError("Cannot send requests while disconnected")
        ident = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._waiting[ident] = (request, future)
        self._writer.write(_frame(b"R", ident, bytes(request)))
        return future

    async def _receive(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                kind, ident, body = await _read(reader)
                if kind == b"U":
                    self._updates_queue.put_nowait(BinaryReader(body).tgread_object())
                    continue
                request, future = self._waiting.pop(ident, (None, None))
                if future is None or future.done():
                    continue
                if kind == b"E":
                    (code,) = struct.unpack("<i", body[:4])
                    future.set_exception(errors.rpc_message_to_error(types.RpcError(code, body[4:].decode()), request))
                elif kind == b"C":
                    future.set_exception(ConnectionError("fake Telegram: the connection broke"))
                else:
                    try:
                        result = request.read_result(BinaryReader(body))
                    except Exception as exc:
                        future.set_exception(exc)
                        continue
                    self._store_own_updates(result)
                    future.set_result(result)
        except (asyncio.IncompleteReadError, ConnectionError):
            self._user_connected = False
            for _, future in self._waiting.values():
                if not future.done():
                    future.set_exception(ConnectionError("the fake Telegram server went away"))
            self._waiting.clear()


def remote_factory(path: str | Path, **overrides: Any):
    """A client factory for `accounts.AccountRegistry` in the daemon's process: the production
    options, with `overrides`, on the server at `path`. The session files must be logged in
    already (ServerHarness.add_account does it)."""
    from sessions import client_options

    def make(account: Any, settings: Any) -> TelegramClient:
        return remote_client(path, account.session_path, settings.tg_api_id or API_ID,
                             **(client_options(settings) | overrides))
    return make


def remote_client(path: str | Path, session: str | Path, api_id: int = API_ID, **options: Any) -> TelegramClient:
    """A real TelegramClient on the session file `session`, talking to the server at `path`."""
    client = TelegramClient(str(session), api_id, API_HASH, **options)
    old = client._sender
    client._sender = RemoteSender(str(path), old.auth_key, loggers=client._log,
                                  updates_queue=client._updates_queue,
                                  auto_reconnect_callback=old._auto_reconnect_callback)
    return client
