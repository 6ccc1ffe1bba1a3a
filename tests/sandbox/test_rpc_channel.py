"""The judge channel's framing and value codec, in one process over real pipes (the sandbox suites test it
between a judge and a program)."""

from __future__ import annotations

import math
import os
import threading

import pytest

from codefoundry.sandbox import rpc


@pytest.fixture
def pair():
    """Two ends of a channel: what `a` sends, `b` receives, and the other way."""
    a_to_b, b_to_a = os.pipe(), os.pipe()
    a = rpc.Channel(b_to_a[0], a_to_b[1], "j")
    b = rpc.Channel(a_to_b[0], b_to_a[1], "c", {"echo": lambda *args: args})
    yield a, b
    for fd in (*a_to_b, *b_to_a):
        try:
            os.close(fd)
        except OSError:
            pass


def _same(x: object, y: object) -> bool:
    """Equal, with exactly the same types all the way down (NaN equal to NaN, -0.0 not equal to 0.0)."""
    if type(x) is not type(y):
        return False
    if type(x) is float:
        return (math.isnan(x) and math.isnan(y)) or (x == y and math.copysign(1, x) == math.copysign(1, y))
    if type(x) in (list, tuple):
        return len(x) == len(y) and all(_same(p, q) for p, q in zip(x, y, strict=True))
    if type(x) is dict:
        return x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    return x == y


VALUES = [
    [1, 2.5, "a", None, True, False],  # a flat list of scalars: sent as itself
    (float("nan"), 2**60),  # NaN first, then an int too big to send as itself: the per-item way
    [2**53 - 1, -(2**53) + 1],  # the largest ints that travel as themselves
    [2**53, 1],
    [-0.0, float("inf"), float("-inf"), 1e308, 5e-324],
    {"k": [1.25, (2, "x")], 3: frozenset({1, 2})},
    [[1, 2], [3.5], []],
    {1.5, -2},
    (),
    "plain",
    2**200,
    b"\x00\xff",
    1 + 2j,
]


@pytest.mark.parametrize("value", VALUES, ids=[repr(v)[:30] for v in VALUES])
def test_values_round_trip_exactly(pair, value):
    a, b = pair
    a.send(["r", a.encode(value)])
    msg = b.recv()
    assert _same(b.decode(msg[1]), value)


def test_builtin_subclasses_in_a_flat_list_arrive_as_plain_values(pair):
    class Loose(int):
        def __eq__(self, other):
            return True

        __hash__ = int.__hash__

    a, b = pair
    a.send(["r", a.encode([1, Loose(0), "s"])])
    got = b.decode(b.recv()[1])
    assert got == [1, 0, "s"] and [type(v) for v in got] == [int, int, str]
    assert got != [1, 5, "s"]


def test_a_call_over_the_channel(pair):
    a, b = pair
    a.send(["q", "call", ["name", "echo"], a.encode([[0.5, 7], ("t",)]), a.encode({})])
    b.serve_one(b.recv())
    assert _same(a.decode(a.recv()[1]), ([0.5, 7], ("t",)))


def test_frames_that_arrive_in_one_read_are_all_received(pair):
    """Several frames written at once (and one split across writes) are read back one by one, in order."""
    a, b = pair
    frames = []
    for i in range(3):
        body = rpc._encode_json(["r", a.encode([i, "x" * 5000 * i])]).encode()
        frames.append(len(body).to_bytes(4, "big") + body)
    data = b"".join(frames)
    os.write(a.wfd, data[:7000])
    os.write(a.wfd, data[7000:])
    for i in range(3):
        assert b.decode(b.recv()[1]) == [i, "x" * 5000 * i]


def test_a_large_frame_arrives_whole(pair):
    """A frame of several MB comes through the pipe in many reads (the writer runs on a thread)."""
    a, b = pair
    value = ["x" * (3 << 20), list(range(50_000))]
    writer = threading.Thread(target=lambda: a.send(["r", a.encode(value)]))
    writer.start()
    got = b.decode(b.recv()[1])
    writer.join()
    assert got == value


def test_a_frame_cut_short_is_peer_gone(pair):
    a, b = pair
    os.write(a.wfd, (100).to_bytes(4, "big") + b'["r", 1')
    os.close(a.wfd)
    with pytest.raises(rpc.PeerGone):
        b.recv()


@pytest.mark.parametrize(
    "body",
    ['["r", {"l": 5}]', '["r", {"l": [1, {"q": 1}]}]', '["r", {"t": [1, 2], "x": 1}]', '["r", {"s": [[1]]}]'],
)
def test_malformed_collections_are_peer_gone(pair, body):
    a, b = pair
    data = body.encode()
    os.write(a.wfd, len(data).to_bytes(4, "big") + data)
    msg = b.recv()
    with pytest.raises(rpc.PeerGone):
        b.decode(msg[1])
