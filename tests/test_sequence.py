"""Tests of epoch sequences: decimation, encodings, token rules, budgets, formats, losses."""

import math
import re
import warnings

import numpy as np
import pytest

from sleepvlm.data.records import DataError
from sleepvlm.data.simulate import simulate_night
from sleepvlm.sequence import (
    CHATTS_PATCH_SIZE,
    SYMBOL_RANGE_UV,
    SYMBOLS,
    BudgetError,
    SequenceConfig,
    SequenceError,
    breakpoints,
    check_epoch,
    choose_config,
    count_tokens,
    decimation_factor,
    decode_text,
    downsample,
    encode_channel,
    encode_epoch,
    information_kept,
    paa,
    raw_configs,
    reconstruct_channel,
    slow_wave_p2p,
    symbol_levels,
    token_table,
)
from sleepvlm.signal import EPOCH_SAMPLES, TARGET_SFREQ, epoch_recording

T = np.arange(EPOCH_SAMPLES) / TARGET_SFREQ


def sine(freq, p2p=2.0):
    return p2p / 2 * np.sin(2 * np.pi * freq * T)


def synthetic_epoch(seed=0):
    """EEG with delta, theta, alpha, sigma and beta; EOG slow; EMG fast; plus noise (µV)."""
    rng = np.random.default_rng(seed)
    eeg = sine(1.0, 80) + sine(5.5, 20) + sine(10, 16) + sine(13.5, 12) + sine(20, 8)
    eog = sine(0.4, 120) + sine(2, 30)
    emg = sine(25, 10) + sine(35, 6)
    noise = rng.standard_normal((3, EPOCH_SAMPLES))
    return np.stack([eeg, eog, emg]) + noise


@pytest.fixture(scope="module")
def night_epochs():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return epoch_recording(simulate_night("dcsm", 0, hours=0.25)).data[:6]


# --- rates and decimation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "q", "length"), [(100, 1, 3000), (50, 2, 1500), (25, 4, 750), (10, 10, 300)]
)
def test_rate_arithmetic(rate, q, length):
    config = SequenceConfig("raw", rate)
    assert decimation_factor(rate) == q
    assert config.length == length
    assert encode_channel(synthetic_epoch()[0], "eeg", config).shape == (length,)


@pytest.mark.parametrize("rate", [0, -5, 30, 60, 200])
def test_rate_that_does_not_divide_100_hz_is_refused(rate):
    with pytest.raises(SequenceError, match="whole factor"):
        SequenceConfig("raw", rate)


def test_decimation_removes_a_40_hz_sine_instead_of_aliasing_it():
    y = downsample(sine(40, 100), 25)
    assert np.ptp(y[20:-20]) < 1.0  # of 100 µV; plain slicing would keep it as 10 Hz
    assert np.ptp(sine(40, 100)[::4]) > 50  # what slicing does


def test_decimation_keeps_a_1_hz_wave():
    y = downsample(sine(1, 100), 25)
    expected = sine(1, 100)[::4]
    assert np.max(np.abs(y - expected)[5:-5]) < 0.5  # of 100 µV, away from the epoch edges
    assert np.max(np.abs(y - expected)) < 2.0


# --- encodings round trip ---------------------------------------------------------------------


@pytest.mark.parametrize("decimals", [0, 1, 2])
def test_raw_round_trip_at_100_hz_is_within_rounding(decimals):
    x = synthetic_epoch()
    encoded = encode_epoch(x, SequenceConfig("raw", 100, decimals))
    decoded = decode_text(encoded.text, encoded.config)
    for i, role in enumerate(("eeg", "eog", "emg")):
        assert np.max(np.abs(decoded[role] - x[i])) <= 0.5 * 10**-decimals + 1e-9


def test_raw_text_carries_the_decimated_values():
    x = synthetic_epoch()
    config = SequenceConfig("raw", 25, 1)
    decoded = decode_text(encode_epoch(x, config).text, config)
    assert np.max(np.abs(decoded["eeg"] - downsample(x[0], 25))) <= 0.05 + 1e-9


@pytest.mark.parametrize("bins", ["uniform", "gaussian"])
def test_symbolic_round_trip_within_the_bin(bins):
    x = synthetic_epoch()
    config = SequenceConfig("symbolic", 25, alphabet=20, bins=bins)
    encoded = encode_epoch(x, config)
    decoded = decode_text(encoded.text, config)
    for i, role in enumerate(("eeg", "eog", "emg")):
        segment_means = paa(x[i], config.length)
        edges = np.concatenate([[-np.inf], breakpoints(role, 20, bins), [np.inf]])
        symbol = np.searchsorted(edges, segment_means, side="right") - 1
        lo, hi = edges[symbol], edges[symbol + 1]
        assert np.all((decoded[role] >= lo) & (decoded[role] <= hi))
        if bins == "uniform":
            inside = np.abs(segment_means) <= SYMBOL_RANGE_UV[role]
            width = 2 * SYMBOL_RANGE_UV[role] / 20
            assert np.all(np.abs(decoded[role] - segment_means)[inside] <= width / 2 + 1e-9)


def test_symbol_levels_are_ordered_and_symbols_are_letters():
    for bins in ("uniform", "gaussian"):
        levels = symbol_levels("eeg", 16, bins)
        assert np.all(np.diff(levels) > 0)
        assert np.allclose(levels, -levels[::-1])  # symmetric about 0 µV
    text = encode_epoch(synthetic_epoch(), SequenceConfig("symbolic", 10, alphabet=8)).text
    body = text.splitlines()[0].split("): ")[1]
    assert set(body.split(" ")) <= set(SYMBOLS[:8])
    assert len(body.split(" ")) == 300


def test_symbolic_bins_are_fixed_in_µv_not_normalised_per_epoch():
    x = synthetic_epoch()
    config = SequenceConfig("symbolic", 10, alphabet=16)
    small = encode_channel(x[0] / 4, "eeg", config)
    large = encode_channel(x[0], "eeg", config)
    assert np.ptp(small) < np.ptp(large)  # z-normalisation would make them equal


def test_bad_symbolic_settings_are_refused():
    with pytest.raises(SequenceError, match="alphabet"):
        SequenceConfig("symbolic", 10, alphabet=len(SYMBOLS) + 1)
    with pytest.raises(SequenceError, match="bins"):
        SequenceConfig("symbolic", 10, bins="quantile")
    with pytest.raises(SequenceError, match="kind"):
        SequenceConfig("sax", 10)


# --- token rules ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "single", "three"),
    [
        ("7", 1, 1),
        ("1234567", 7, 3),  # 123|456|7
        ("12,-3,4", 6, 5),  # 1|2|,-|3|,|4  vs  12|,-|3|,|4
        ("-0.5", 4, 4),  # -|0|.|5
        ("100,-250", 7, 3),  # 1|0|0|,-|2|5|0  vs  100|,-|250
        ("a b c", 3, 3),  # a| b| c
        # EEG| (|µV|,| |2|5| Hz|,| |7|5|0| samples|):| |1  vs  ...|25|...|750|...
        ("EEG (µV, 25 Hz, 750 samples): 1", 17, 14),
        ("1,2\n3", 5, 5),
    ],
)
def test_token_rules_on_hand_made_strings(text, single, three):
    assert count_tokens(text, "single_digit") == single
    assert count_tokens(text, "three_digit") == three


def test_unknown_tokenizer_family_is_refused():
    with pytest.raises(SequenceError, match="family"):
        count_tokens("1,2", "sentencepiece")


def test_token_estimates_of_an_epoch_match_the_rule_on_its_text():
    encoded = encode_epoch(synthetic_epoch(), SequenceConfig("raw", 10, 0))
    digits = sum(len(run) for run in re.findall(r"\d+", encoded.text))
    assert encoded.tokens["single_digit"] > digits  # digits plus separators and headers
    assert encoded.tokens["three_digit"] < encoded.tokens["single_digit"]


# --- budgets ----------------------------------------------------------------------------------


def test_budget_picks_the_largest_config_under_budget():
    x = synthetic_epoch()[None]
    costs = {c: encode_epoch(x[0], c).tokens["single_digit"] for c in raw_configs()}
    ordered = raw_configs()
    for k in range(1, len(ordered)):
        budget = costs[ordered[k]]
        chosen = choose_config(x, budget)
        fitting = [c for c in ordered if costs[c] <= budget]
        assert chosen == fitting[0]
        assert costs[chosen] <= budget


def test_budget_prefers_rate_over_precision():
    assert [(c.rate, c.decimals) for c in raw_configs(rates=(25, 50), decimals=(0, 1))] == [
        (50, 1),
        (50, 0),
        (25, 1),
        (25, 0),
    ]


def test_budget_that_nothing_fits_raises():
    with pytest.raises(BudgetError, match="no encoding fits 50 tokens"):
        choose_config(synthetic_epoch()[None], 50)


def test_token_table_reports_length_and_cost(night_epochs):
    configs = [SequenceConfig("raw", 25, 0), SequenceConfig("symbolic", 25, alphabet=16)]
    table = token_table(night_epochs, configs)
    assert list(table["samples_per_channel"]) == [750, 750]
    assert (table["tokens_single_digit_max"] >= table["tokens_single_digit"]).all()
    # Each symbol costs one token (space + letter), plus the short headers.
    symbolic = table.loc[configs[1].name, "tokens_single_digit"]
    assert 3 * 750 <= symbolic <= 3 * 750 + 150


# --- formats ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [100, 25, 10])
def test_chatts_format_has_one_placeholder_and_array_per_channel(rate):
    encoded = encode_epoch(synthetic_epoch(), SequenceConfig("raw", rate, 1), "chatts")
    assert encoded.text.count("<ts><ts/>") == 3
    assert encoded.lengths == [30 * rate] * 3
    assert [line.split(",")[0] for line in re.findall(r"(?:EEG|EOG|EMG)[^;]*", encoded.text)] == [
        "EEG",
        "EOG",
        "EMG",
    ]
    assert f"is of length {30 * rate}" in encoded.text and f"{rate} Hz" in encoded.text
    request = encoded.chatts_inputs()
    assert len(request["multi_modal_data"]["timeseries"]) == 3
    assert all(isinstance(v, float) for v in request["multi_modal_data"]["timeseries"][0][:5])
    patches = 3 * math.ceil(30 * rate / CHATTS_PATCH_SIZE)
    assert encoded.tokens["single_digit"] > patches
    assert bool(encoded.notes) == (30 * rate > 1024)


def test_text_format_names_unit_rate_and_length():
    encoded = encode_epoch(synthetic_epoch(), SequenceConfig("raw", 25, 0))
    first = encoded.text.splitlines()[0]
    assert first.startswith("EEG (µV, 25 Hz, 750 samples): ")
    assert len(first.split(": ")[1].split(",")) == 750


def test_formats_and_kinds_must_match():
    with pytest.raises(SequenceError, match="does not take"):
        encode_epoch(synthetic_epoch(), SequenceConfig("symbolic", 10), "chatts")
    with pytest.raises(SequenceError, match="does not take"):
        encode_epoch(synthetic_epoch(), SequenceConfig("raw", 10), "symbolic")
    with pytest.raises(SequenceError, match="no ChatTS arrays"):
        encode_epoch(synthetic_epoch(), SequenceConfig("raw", 10)).chatts_inputs()


# --- bad input --------------------------------------------------------------------------------


def test_nan_epoch_is_a_data_error():
    x = synthetic_epoch()
    x[1, 100] = np.nan
    with pytest.raises(DataError, match="NaN.*EOG"):
        encode_epoch(x)


@pytest.mark.parametrize(
    ("shape", "message"),
    [((2, 3000), "channels"), ((3, 3840), "sampling rate"), ((3000,), "shape")],
)
def test_wrong_shape_is_a_data_error(shape, message):
    with pytest.raises(DataError, match=message):
        check_epoch(np.zeros(shape))


def test_wrong_sampling_rate_is_a_data_error():
    with pytest.raises(DataError, match="128 Hz"):
        encode_epoch(synthetic_epoch(), sfreq=128)


def test_flat_and_clipped_channels_are_encoded_but_flagged():
    x = synthetic_epoch()
    x[1] = 0.0  # a missing EOG is a zero channel
    x[0] = np.clip(x[0], -30, 30)
    encoded = encode_epoch(x, SequenceConfig("raw", 25))
    assert encoded.flags == {"eeg": ["clipped"], "eog": ["flat"]}
    assert encode_epoch(synthetic_epoch()).flags == {}


def test_values_past_the_symbol_range_are_flagged():
    x = synthetic_epoch()
    x[0] += 3 * SYMBOL_RANGE_UV["eeg"]
    encoded = encode_epoch(x, SequenceConfig("symbolic", 10))
    assert "out_of_range" in encoded.flags["eeg"]


# --- information kept -------------------------------------------------------------------------


def test_100_hz_integers_keep_band_powers(night_epochs):
    table = information_kept(night_epochs, [SequenceConfig("raw", 100, 0)])
    errors = table.filter(like="_error_pct").iloc[0]
    assert (errors.abs() < 3).all()
    assert table["correlation"].iloc[0] > 0.999


def test_10_hz_loses_sigma_and_beta_but_keeps_delta():
    x = synthetic_epoch()[None]
    row = information_kept(x, [SequenceConfig("raw", 10, 0)]).iloc[0]
    assert row["nyquist_hz"] == 5
    assert row["sigma_error_pct"] < -95 and row["beta_error_pct"] < -95
    assert abs(row["delta_error_pct"]) < 5


def test_a_trace_rounded_flat_keeps_nothing_and_says_so_without_a_warning():
    x = synthetic_epoch()[None].copy()
    x[0, 2] = 0.3 * np.sin(np.linspace(0, 300, x.shape[-1]))  # a chin EMG below half a µV
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        row = information_kept(x, [SequenceConfig("raw", 25, 0)], role="emg").iloc[0]
    assert row["correlation"] == 0.0


def test_reconstruction_is_back_at_100_hz():
    for config in (SequenceConfig("raw", 10), SequenceConfig("symbolic", 25)):
        assert reconstruct_channel(synthetic_epoch()[0], "eeg", config).shape == (EPOCH_SAMPLES,)


def test_slow_wave_amplitude_survives_raw_decimation():
    assert slow_wave_p2p(SequenceConfig("raw", 25, 0)) == pytest.approx(75, abs=2)
    # A coarse alphabet can shrink a 75 µV wave below the N3 criterion.
    assert slow_wave_p2p(SequenceConfig("symbolic", 25, alphabet=4, bins="gaussian")) < 75
