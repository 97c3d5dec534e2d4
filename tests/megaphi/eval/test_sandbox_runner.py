"""The wire between a candidate and its tests carries plain data only, and its decoder accepts nothing else."""

import collections
import decimal
import enum
import fractions
import math
import os

import pytest

from megaphi.eval.sandbox_runner import (
    MAX_DEPTH,
    ProtocolError,
    Unsendable,
    decode,
    dump_json,
    encode,
    parse_json,
    receive,
    send,
)


def round_trip(value):
    return decode(parse_json(dump_json(encode(value))))


class Colour(enum.IntEnum):
    RED = 1


PLAIN = [
    None,
    True,
    False,
    0,
    -7,
    2**63,
    -(2**200),
    1.5,
    -0.0,
    float("inf"),
    "",
    "tab\tnul\x00 é \ud800",
    b"\x00\xff",
    bytearray(b"ab"),
    [1, [2, [3]]],
    (1, (2,)),
    (),
    {1: "a", (1, 2): [3], None: {"k": 1.0}},
    {1, (2, 3), frozenset({4})},
    frozenset(),
    3 - 4j,
    range(1, 10, 3),
    fractions.Fraction(-(2**70), 3),
    decimal.Decimal("-1.50E+3"),
    decimal.Decimal("Infinity"),
]


@pytest.mark.parametrize("value", PLAIN, ids=[type(v).__name__ + str(i) for i, v in enumerate(PLAIN)])
def test_plain_values_cross_with_their_exact_type_and_value(value):
    back = round_trip(value)
    assert type(back) is type(value) and back == value
    if isinstance(value, float):
        assert math.copysign(1, back) == math.copysign(1, value)


def test_built_in_types_cross_as_themselves():
    assert [round_trip(kind) for kind in (int, str, type(None), tuple)] == [int, str, type(None), tuple]
    with pytest.raises(Unsendable):
        encode(Colour)
    with pytest.raises(ProtocolError):
        decode(["T", "Colour"])


def test_nan_crosses_as_nan():
    assert math.isnan(round_trip(float("nan")))


def test_subclasses_of_plain_types_cross_as_their_base_type():
    Point = collections.namedtuple("Point", "x y")
    assert [
        (type(v), v)
        for v in map(
            round_trip, [Point(1, 2), collections.Counter("aab"), collections.OrderedDict(b=1, a=2), Colour.RED]
        )
    ] == [(tuple, (1, 2)), (dict, {"a": 2, "b": 1}), (dict, {"b": 1, "a": 2}), (int, 1)]


def test_iterators_are_materialised_and_arrive_as_iterators():
    back = round_trip(x * x for x in range(4))
    assert iter(back) is back and list(back) == [0, 1, 4, 9]
    assert list(round_trip(map(str, [1, 2]))) == ["1", "2"]
    assert sorted(round_trip({"a": 1, "b": 2}.keys())) == ["a", "b"]


@pytest.mark.parametrize(
    "value", [object(), lambda: 1, type("AlwaysEqual", (), {"__eq__": lambda s, o: True})(), [[[object()]]]]
)
def test_objects_with_behaviour_of_their_own_are_refused(value):
    with pytest.raises(Unsendable):
        encode(value)


def test_the_candidate_keeps_other_objects_and_sends_handles_that_come_back_as_its_own():
    mine, kept = object(), []
    wire = encode([mine, 1], kept)
    assert wire == ["l", ["h", 0, "object"], 1] and kept == [mine]
    handle = decode(parse_json(dump_json(wire)))[0]
    assert repr(handle) == "<a object object in the candidate's process>" and handle != mine
    assert handle != decode(["h", 0, "object"]) and handle in [handle]  # it equals only itself
    assert decode(encode([handle]), kept=kept) == [mine]  # the test passes it back
    with pytest.raises(ProtocolError):
        decode(["h", 1], kept=kept)  # no such object


def test_nesting_is_bounded_both_ways():
    deep = []
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(Unsendable, match="nested deeper"):
        encode(deep)
    wire = 1
    for _ in range(MAX_DEPTH + 1):
        wire = ["l", wire]
    with pytest.raises(ProtocolError):
        decode(wire)


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1}',
        '["x", 1]',
        "[]",
        '["d", 1]',
        '["s", ["l"]]',
        '["d", ["l"], 1]',
        '["i", "zz"]',
        '["r", 1, 2, 0]',
        '["r", 1.5, 2, 1]',
        '["q", 1, 0]',
        '["q", 1.5, 2]',
        '["e", "one"]',
        '["e", 1]',
        '["@", "root"]',
        '["b", "xyz"]',
        '["c", "1", 2]',
        "[1, 2]",
        "[true",
        "1 2",
        "1" * 5000,
        "[" * 100000,
        '"\\ud800',
        "nul",
    ],
)
def test_the_decoder_refuses_anything_but_the_format(text):
    with pytest.raises(ProtocolError):
        decode(parse_json(text))


def test_messages_are_framed_and_bounded():
    read, write = os.pipe()
    try:
        send(write, ["return", encode([1, "two"]), []])
        assert receive(read, 1 << 10) == ["return", ["l", 1, "two"], []]
        send(write, ["return", "x" * 2000, []])
        with pytest.raises(ProtocolError, match="more than the 1024 allowed"):
            receive(read, 1 << 10)
    finally:
        os.close(write)
        os.close(read)
    read, write = os.pipe()
    os.write(write, b"\x00\x00\x00\x05[1")  # the writer dies mid-message
    os.close(write)
    assert receive(read, 1 << 10) is None
    os.close(read)
