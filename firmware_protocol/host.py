"""Small blocking host-side helpers for scripts, tests and the ``probe`` command.

The daemon has its own asyncio loop; it uses the same pure pieces (codec, handshake checks).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from firmware_protocol.codec import Decoder, encode
from firmware_protocol.errors import LinkTimeout
from firmware_protocol.handshake import check_reply, host_hello
from firmware_protocol.messages import Hello, Message
from firmware_protocol.transport import Transport


def wait_for(
    transport: Transport,
    decoder: Decoder,
    predicate: Callable[[Message], bool],
    timeout: float,
    seen: list[Message] | None = None,
) -> Message:
    """Read until a message satisfies ``predicate``; messages read are appended to ``seen``.

    Raises LinkTimeout after ``timeout`` seconds, LinkLost if the link goes away.
    """
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise LinkTimeout(f"{transport.url}: no matching message within {timeout:g} s")
        for msg in decoder.feed(transport.read(timeout=min(left, 0.05))):
            if seen is not None:
                seen.append(msg)
            if predicate(msg):
                return msg


def handshake(transport: Transport, decoder: Decoder, *, seq: int = 0, timeout: float = 1.0) -> Hello:
    """Send our HELLO and return the device's matching HELLO.

    Raises HandshakeError on a mismatch (fail closed), LinkTimeout if the device stays silent.
    """
    transport.write(encode(host_hello(seq=seq)))
    found: list[Hello] = []

    def answered(msg: Message) -> bool:
        hello = check_reply(msg)
        if hello is not None:
            found.append(hello)
        return hello is not None

    wait_for(transport, decoder, answered, timeout)
    return found[0]
