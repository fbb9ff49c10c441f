"""Tests of the AASM rule table: the required rules exist with citations and usable fields."""

import pytest

from sleepvlm.data.records import ROLES, STAGES
from sleepvlm.rules.table import (
    BANDS,
    CITATION_KEY,
    RULES,
    SETTINGS,
    changed_settings,
    changed_thresholds,
    rules_frame,
    setting,
    settings_frame,
    threshold,
)

REQUIRED = (
    "W.alpha",
    "W.eyes",
    "N1.lamf",
    "N1.vertex",
    "N1.sem",
    "N2.spindle",
    "N2.kcomplex",
    "N2.cont",
    "N2.arousal_end",
    "N3.sw20",
    "R.rem",
    "R.atonia",
    "R.sawtooth",
    "R.cont",
    "R.arousal_end",
    "major_body_movement",
)


def test_required_rules_present_and_well_formed():
    assert set(REQUIRED) <= set(RULES)
    for rule in RULES.values():
        assert rule.stage in (*STAGES, "any")
        assert rule.role in ROLES and set(rule.needs) <= set(ROLES) and rule.role in rule.needs
        assert "v2.6" in rule.citation and rule.criterion.endswith(".")
        assert set(rule.detectors) <= set(SETTINGS)
    assert CITATION_KEY == "berry2020aasm"


def test_aasm_numbers():
    assert threshold("N2.spindle", "band_hz") == (11.0, 16.0)
    assert threshold("N2.spindle", "min_duration_s") == 0.5
    assert threshold("N3.sw20", "band_hz") == (0.5, 2.0)
    assert threshold("N3.sw20", "min_ptp_uv") == 75.0
    assert threshold("N3.sw20", "min_epoch_fraction") == 0.2
    assert threshold("N2.kcomplex", "min_duration_s") == 0.5
    assert threshold("W.alpha", "band_hz") == BANDS["alpha"] == (8.0, 13.0)
    assert threshold("R.rem", "max_deflection_s") == threshold("N1.sem", "min_deflection_s")
    assert RULES["N2.cont"].context and not RULES["N3.sw20"].context


def test_unknown_names_raise_key_errors_naming_them():
    with pytest.raises(KeyError, match="N3.sw20.*nope"):
        threshold("N3.sw20", "nope")
    with pytest.raises(KeyError, match="spindle.*nope"):
        setting("spindle", "nope")


def test_frames_for_the_book():
    frame = rules_frame()
    assert frame["id"].tolist() == list(RULES)
    row = frame.set_index("id").loc["N3.sw20"]
    assert "min_ptp_uv = 75.0" in row["thresholds"] and row["channel"] == "EEG"
    settings = settings_frame()
    assert set(settings["detector"]) == set(SETTINGS)
    assert (settings.query("setting == 'min_sfreq'")["value"] > 0).all()


def test_a_changed_setting_or_threshold_holds_inside_its_block_only():
    before = setting("spindle", "upper_factor"), threshold("N3.sw20", "min_epoch_fraction")
    with (
        changed_settings("spindle", upper_factor=5.0),
        changed_thresholds("N3.sw20", min_epoch_fraction=0.3),
    ):
        assert setting("spindle", "upper_factor") == 5.0
        assert threshold("N3.sw20", "min_epoch_fraction") == 0.3
    assert (
        setting("spindle", "upper_factor"),
        threshold("N3.sw20", "min_epoch_fraction"),
    ) == before
    with pytest.raises(RuntimeError), changed_settings("spindle", upper_factor=9.0):
        raise RuntimeError("an exercise that fails")
    assert setting("spindle", "upper_factor") == before[0]  # restored after an error too
    with pytest.raises(KeyError, match="no setting"), changed_settings("spindle", upper=5.0):
        pass
    with pytest.raises(KeyError, match="no threshold"), changed_thresholds("N3.sw20", share=0.3):
        pass
