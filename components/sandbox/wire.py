"""Length-prefixed JSON messages over Unix stream sockets, optionally carrying file descriptors.

Used between the caller and the fork server (trusted, blocking) and between the caller and a session
(untrusted: the caller reads those with ``MessageBuffer`` so a session cannot stall or flood it).
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

HEADER = struct.Struct(">I")
MAX_MESSAGE = 64 << 20


def encode(obj: Any) -> bytes:
    body = json.dumps(obj, separators=(",", ":")).encode()
    return HEADER.pack(len(body)) + body


def send(sock: socket.socket, obj: Any, fds: list[int] | None = None) -> None:
    data = encode(obj)
    if fds:
        sent = socket.send_fds(sock, [data[: HEADER.size]], fds)
        sock.sendall(data[sent:])
    else:
        sock.sendall(data)


def recv(sock: socket.socket, maxfds: int = 0) -> tuple[Any, list[int]] | None:
    """Block for one message; None at end of stream."""
    fds: list[int] = []
    head = b""
    while len(head) < HEADER.size:
        if maxfds and not head:
            chunk, got, _, _ = socket.recv_fds(sock, HEADER.size, maxfds)
            fds.extend(got)
        else:
            chunk = sock.recv(HEADER.size - len(head))
        if not chunk:
            return None
        head += chunk
    (size,) = HEADER.unpack(head)
    if size > MAX_MESSAGE:
        raise ValueError(f"message of {size} bytes exceeds {MAX_MESSAGE}")
    body = bytearray()
    while len(body) < size:
        chunk = sock.recv(min(size - len(body), 1 << 20))
        if not chunk:
            return None
        body += chunk
    return json.loads(body), fds


class MessageBuffer:
    """Accumulates bytes from an untrusted peer; ``message()`` returns the first complete message."""

    def __init__(self, limit: int = 1 << 16) -> None:
        self.data = bytearray()
        self.limit = limit

    def feed(self, chunk: bytes) -> None:
        self.data += chunk

    def message(self) -> Any:
        """The decoded message, None while incomplete; ValueError when malformed or too large."""
        if len(self.data) < HEADER.size:
            return None
        (size,) = HEADER.unpack(self.data[: HEADER.size])
        if size > self.limit:
            raise ValueError(f"message of {size} bytes exceeds {self.limit}")
        if len(self.data) < HEADER.size + size:
            return None
        return json.loads(self.data[HEADER.size : HEADER.size + size])
