"""Transports opened by URL: loop pairs, real pseudo-terminals, unplug and reopen."""

from __future__ import annotations

import os
import tty

import pytest

from firmware_protocol import (
    Command,
    Decoder,
    LinkError,
    LinkLost,
    LinkTimeout,
    LinkUnavailable,
    LoopTransport,
    ProtocolError,
    PtyTransport,
    SerialTransport,
    TransportClosedError,
    TransportUrlError,
    encode,
    open_transport,
)


def read_exactly(transport, n, timeout=2.0):
    data = b""
    while len(data) < n:
        chunk = transport.read(timeout=timeout)
        assert chunk, f"only {len(data)} of {n} bytes arrived"
        data += chunk
    return data


@pytest.fixture
def pty_pair():
    device = open_transport("pty://")
    host = open_transport(device.slave_path)
    yield device, host
    host.close()
    device.close()


def test_url_forms_choose_the_backend(tmp_path):
    a = open_transport("loop://")
    assert isinstance(a, LoopTransport) and isinstance(a.peer, LoopTransport)
    p = open_transport("pty://")
    assert isinstance(p, PtyTransport) and p.slave_path.startswith("/dev/")
    s = open_transport(f"serial://{p.slave_path}")
    assert isinstance(s, SerialTransport) and s.url == f"serial://{p.slave_path}"
    for t in (a, a.peer, s, p):
        t.close()
    for bad, message in (
        ("tcp://x:1", "tcp://x:1: unknown transport scheme (use a device path, serial://PATH, pty://, loop://)"),
        ("pty://extra", "pty://extra: pty:// takes no path"),
        ("", "empty transport URL"),
    ):
        with pytest.raises(TransportUrlError) as err:
            open_transport(bad)
        assert str(err.value) == message  # the one table of schemes names them all
    with pytest.raises(LinkUnavailable):
        open_transport(str(tmp_path / "no-such-device"))


def test_loop_pair_carries_frames_both_ways():
    a = open_transport("loop://")
    b = a.peer
    msg = Command(1, 500, seq=3)
    a.write(encode(msg))
    assert Decoder().feed(read_exactly(b, len(encode(msg)))) == [msg]
    b.write(b"xyz")
    assert a.read(timeout=1.0) == b"xyz"
    assert a.read(timeout=0) == b""
    a.close()
    with pytest.raises(LinkLost):
        b.read(timeout=1.0)
    b.close()


def test_named_loop_urls_pair_up():
    a = open_transport("loop://bus1")
    b = open_transport("loop://bus1")
    assert a is not b and a.peer is b
    a.write(b"\x00\x01")
    assert b.read(timeout=1.0) == b"\x00\x01"
    c = open_transport("loop://bus1")  # a third open starts a new pair
    assert c is not a and c is not b
    for t in (a, b, c, c.peer):
        t.close()


def test_a_named_loop_opened_once_closes_both_ends():
    """The other end of a named pair nobody opened (a daemon stopped before its link opened) is
    closed with the first, not left to the garbage collector (a ResourceWarning in a later test)."""
    a = open_transport("loop://lonely")
    b = a.peer
    assert isinstance(b, LoopTransport) and not b.closed
    a.close()
    assert b.closed
    c = open_transport("loop://lonely")  # a new pair, not the closed ends
    assert c is not a and c is not b and not c.closed
    c.close()
    assert c.peer is not None and c.peer.closed


def test_pty_is_raw_binary_clean_and_does_not_echo(pty_pair):
    device, host = pty_pair
    data = bytes(range(256)) * 4  # includes ^C, ^D, ^S, CR, LF, DEL
    host.write(data)
    assert read_exactly(device, len(data)) == data
    device.write(data)
    assert read_exactly(host, len(data)) == data
    assert device.read(timeout=0.05) == b""  # no echo of what the device wrote


def test_unplug_raises_link_lost_and_reopen_reports_unavailable(pty_pair):
    device, host = pty_pair
    path = device.slave_path
    device.close()  # the pty master goes away: the cable is unplugged
    with pytest.raises(LinkLost) as info:
        host.read(timeout=1.0)
    assert isinstance(info.value, LinkError) and isinstance(info.value, ProtocolError)
    with pytest.raises(LinkLost):
        host.write(b"\x00\x01\x00")
    host.close()
    if not os.path.exists(path):  # the kernel may reuse the number for another pty at once
        with pytest.raises(LinkUnavailable):
            open_transport(path)


def test_reopen_after_replug_via_symlink(tmp_path):
    link = tmp_path / "myhand"
    first = open_transport("pty://")
    os.symlink(first.slave_path, link)
    host = open_transport(str(link))
    first.close()
    with pytest.raises(LinkLost):
        host.read(timeout=1.0)
    host.close()
    second = open_transport("pty://")
    os.replace(_temp_symlink(second.slave_path, tmp_path), link)
    host = open_transport(str(link))
    second.write(b"back")
    assert host.read(timeout=1.0) == b"back"
    host.close()
    second.close()


def _temp_symlink(target, directory):
    tmp = directory / ".myhand.tmp"
    os.symlink(target, tmp)
    return tmp


def test_serial_open_flushes_stale_input_and_is_exclusive():
    device = open_transport("pty://")
    device.write(b"stale bytes queued before anyone listened")
    host = open_transport(device.slave_path)
    assert host.read(timeout=0.05) == b""
    with pytest.raises(LinkUnavailable):
        open_transport(device.slave_path)  # a second daemon on the same port is refused
    host.close()
    device.close()


def test_write_times_out_when_nobody_drains(pty_pair):
    device, _host = pty_pair
    with pytest.raises(LinkTimeout) as info:
        for _ in range(10_000):
            device.write(b"\x55" * 4096, timeout=0.05)
    assert isinstance(info.value, TimeoutError)


def test_closed_transport_refuses_use():
    a = open_transport("loop://")
    a.close()
    a.close()  # idempotent
    assert a.closed and "closed" in repr(a)
    with pytest.raises(TransportClosedError):
        a.read()
    with pytest.raises(TransportClosedError):
        a.write(b"x")
    a.peer.close()


def test_pty_slave_mode_is_raw():
    import termios

    device = PtyTransport()
    fd = os.open(device.slave_path, os.O_RDWR | os.O_NOCTTY)
    try:
        lflag = termios.tcgetattr(fd)[tty.LFLAG]
        assert not lflag & (termios.ECHO | termios.ICANON | termios.ISIG)
    finally:
        os.close(fd)
        device.close()
