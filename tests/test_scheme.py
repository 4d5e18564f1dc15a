"""The one Scheme type: text, JSON and wire round trips, ordering, and bad input."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cli.errors import CoInferError
from compress import activation
from compress.scheme import ALL_CLOUD, ALL_EDGE, Scheme, all_schemes
from runtime.protocol import Request, decode, encode

splits = st.builds(Scheme, st.integers(0, 126), st.integers(1, 4096), st.integers(1, 8))
schemes = st.one_of(splits, st.just(ALL_CLOUD), st.just(ALL_EDGE))


@given(schemes)
def test_text_and_json_round_trip(s: Scheme) -> None:
    assert Scheme.parse(str(s)) == s
    assert Scheme.from_json(json.loads(json.dumps(s.to_json()))) == s


def test_fixed_forms() -> None:
    assert str(Scheme(4, 12, 3)) == "4,12,3" and Scheme.parse("4-12-3") == Scheme(4, 12, 3)
    assert Scheme(1, 5, 1).to_json() == {"p": 1, "c": 5, "b": 1}
    assert ALL_EDGE.to_json() == "all-edge" and ALL_CLOUD.to_json() == "all-cloud"
    assert Scheme.parse(" all-cloud ") is ALL_CLOUD
    p, c, b = Scheme(2, 3, 4)
    assert (p, c, b) == (2, 3, 4)


def test_order_is_how_much_runs_on_the_edge() -> None:
    assert sorted([ALL_EDGE, Scheme(1, 1, 1), Scheme(0, 9, 8), ALL_CLOUD, Scheme(0, 9, 2)]) == \
        [ALL_CLOUD, Scheme(0, 9, 2), Scheme(0, 9, 8), Scheme(1, 1, 1), ALL_EDGE]
    assert len(all_schemes([2, 3])) == 40 and all_schemes([2, 3])[0] == Scheme(0, 1, 1)


@given(splits, st.integers(1, 3))
def test_wire_round_trip_through_a_request_frame(s: Scheme, n: int) -> None:
    c = min(s.c, 8)
    s = Scheme(s.p, c, s.b)
    shape = (n, c, 2, 2)
    import torch
    body = activation.to_bytes(torch.arange(n * c * 4, dtype=torch.float32).reshape(shape), s.b)
    p, c_wire, bits = s.wire(c)
    frame = encode(Request(7, "app", p, c_wire, bits, 1, shape, body))
    assert decode(frame).scheme == s


def test_all_cloud_on_the_wire_and_all_edge_never() -> None:
    assert ALL_CLOUD.wire(3) == (-1, 3, 8) and Scheme.from_wire(-1, 3, 8) is ALL_CLOUD
    with pytest.raises(CoInferError, match="sends nothing"):
        ALL_EDGE.wire(3)


@pytest.mark.parametrize("text, says", [
    ("", "bad scheme '': expected p,c,b"), ("1,2", "bad scheme '1,2'"), ("a,b,c", "bad scheme 'a,b,c'"),
    ("1,2,3,4", "bad scheme '1,2,3,4'"), ("0,0,1", "channels 0 < 1"), ("0,1,9", r"bits 9 outside 1\.\.8"),
    ("-2,1,1", "bad scheme '-2,1,1'"), ("all-fog", "bad scheme 'all-fog': expected p,c,b"),
])
def test_bad_text_is_one_line_error(text: str, says: str) -> None:
    with pytest.raises(CoInferError, match=says):
        Scheme.parse(text)


@pytest.mark.parametrize("value, says", [
    ([1, 2, 3], r"bad scheme \[1, 2, 3\]: expected {"), ({"p": 1, "c": 2}, "bad scheme {'p': 1, 'c': 2}"),
    ({"p": 1, "c": 2, "b": "3"}, "scheme fields must be integers, got 1,2,'3'"), ("split", "bad scheme 'split'"),
    (None, "bad scheme None"),
])
def test_bad_json_is_one_line_error(value, says: str) -> None:
    with pytest.raises(CoInferError, match=says):
        Scheme.from_json(value)
