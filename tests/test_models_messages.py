"""Tests of chat messages with ChatTS time series: validation, hashes, and the wire form."""

import numpy as np
import pytest

from sleepvlm.models import Message, ModelError, user_request
from sleepvlm.models.messages import (
    TS_PLACEHOLDER,
    hash_messages,
    timeseries_part,
    to_openai_messages,
    wire_images,
    wire_text,
    wire_timeseries,
)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
TEXT = f"EEG: {TS_PLACEHOLDER}; EOG: {TS_PLACEHOLDER}. Stage?"


def _series(seed=0, n=2, length=64):
    return np.random.default_rng(seed).normal(0, 30, (n, length))


def test_arrays_become_hashable_tuples_of_floats():
    series = _series()
    message = Message("user", TEXT, timeseries=series)
    assert isinstance(message.timeseries, tuple) and len(message.timeseries) == 2
    assert all(isinstance(v, float) for v in message.timeseries[0])
    assert np.array_equal(np.array(message.timeseries), series)
    assert hash(message) == hash(Message("user", TEXT, timeseries=series.tolist()))


def test_series_and_placeholders_must_match_and_values_be_finite():
    with pytest.raises(ModelError, match="2 time series but 1"):
        Message("user", f"EEG: {TS_PLACEHOLDER}", timeseries=_series())
    broken = _series()
    broken[1, 5] = np.nan
    with pytest.raises(ModelError, match="time series 1 is empty or holds NaN"):
        Message("user", TEXT, timeseries=broken)
    with pytest.raises(ModelError, match="time series 0 is empty"):
        Message("user", TEXT, timeseries=[[], [1.0]])
    with pytest.raises(ModelError, match="not a sequence of numbers"):
        Message("user", TEXT, timeseries=[["a"], [1.0]])


def test_hash_changes_with_any_value_but_text_and_image_hashes_stay():
    series = _series()
    base = hash_messages(user_request(TEXT, timeseries=series).messages)
    nudged = series.copy()
    nudged[1, -1] += 1e-9
    assert hash_messages(user_request(TEXT, timeseries=nudged).messages) != base
    assert hash_messages(user_request(TEXT, timeseries=series[::-1]).messages) != base
    assert hash_messages(user_request(TEXT, timeseries=series).messages) == base
    assert user_request(TEXT, timeseries=series).input_hash == base
    # Requests without series hash as before the field existed (stored answers stay valid).
    assert hash_messages(user_request("Stage?", images=(PNG,)).messages) == "df53e06f728cc22f"
    assert hash_messages(user_request("Stage?").messages) == "a5aa5d29fca19e05"


def test_wire_form_is_chatts_content_parts_and_decodes_back_exactly():
    series = _series(length=3000)
    request = user_request(TEXT, images=(PNG,), system="Score sleep.", timeseries=series)
    wire = to_openai_messages(request.messages)
    assert wire[0] == {"role": "system", "content": "Score sleep."}
    parts = wire[1]["content"]
    assert [p["type"] for p in parts] == ["image_url", "text", "timeseries", "timeseries"]
    assert parts[2] == timeseries_part(request.messages[1].timeseries[0])
    assert parts[2]["timeseries"]["data"][:2] == series[0, :2].tolist()
    decoded = wire_timeseries(wire)
    assert np.array_equal(np.array(decoded), series)  # bit for bit
    assert wire_text(wire) == "Score sleep.\n\n" + TEXT and wire_images(wire) == [PNG]
    assert to_openai_messages(user_request("Stage?").messages) == [
        {"role": "user", "content": "Stage?"}
    ]


def test_timeseries_parts_that_are_not_inline_numbers_are_refused():
    url_part = {"type": "timeseries", "timeseries": {"data": "https://x/ts.csv"}}
    with pytest.raises(ModelError, match="inline"):
        wire_timeseries([{"role": "user", "content": [url_part]}])
    nested = {"type": "timeseries", "timeseries": {"data": [[1.0, 2.0]]}}
    with pytest.raises(ModelError, match="inline"):
        wire_timeseries([{"role": "user", "content": [nested]}])
    assert wire_timeseries([{"role": "user", "content": "no parts"}]) == []
