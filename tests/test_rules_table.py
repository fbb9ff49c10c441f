"""Tests of the AASM rule table: the required rules exist with citations and usable fields."""

import pickle

import pytest

from sleepvlm.data.records import ROLES, STAGES
from sleepvlm.rules.table import (
    BANDS,
    CITATION_KEY,
    DEFAULT_RULES,
    RULES,
    SETTINGS,
    RuleSet,
    rules_frame,
    settings_frame,
)

threshold, setting = DEFAULT_RULES.threshold, DEFAULT_RULES.setting

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


def test_a_variant_changes_its_own_values_and_leaves_the_default_as_it_is():
    variant = DEFAULT_RULES.with_settings("spindle", upper_factor=5.0).with_thresholds(
        "N3.sw20", min_epoch_fraction=0.3
    )
    assert variant.setting("spindle", "upper_factor") == 5.0
    assert variant.threshold("N3.sw20", "min_epoch_fraction") == 0.3
    assert variant.threshold("N3.sw20", "min_ptp_uv") == 75.0  # the others are kept
    assert setting("spindle", "upper_factor") != 5.0
    assert threshold("N3.sw20", "min_epoch_fraction") == 0.2
    assert variant.values() != DEFAULT_RULES.values()
    assert RuleSet().values() == DEFAULT_RULES.values()
    with pytest.raises(KeyError, match="no setting"):
        DEFAULT_RULES.with_settings("spindle", upper=5.0)
    with pytest.raises(KeyError, match="no threshold"):
        DEFAULT_RULES.with_thresholds("N3.sw20", share=0.3)


def test_the_default_tables_cannot_be_changed_behind_a_callers_back():
    with pytest.raises(TypeError):
        SETTINGS["spindle"]["upper_factor"] = 5.0
    with pytest.raises(TypeError):
        RULES["N3.sw20"].thresholds["min_ptp_uv"] = 50.0
    with pytest.raises(TypeError):
        RULES["N3.sw20"] = RULES["N2.spindle"]


def test_a_rule_set_travels_to_a_worker_process_with_its_values():
    variant = DEFAULT_RULES.with_settings("spindle", upper_factor=5.0)
    copy = pickle.loads(pickle.dumps(variant))
    assert copy.values() == variant.values()
    assert copy.setting("spindle", "upper_factor") == 5.0
    with pytest.raises(TypeError):
        copy.settings["spindle"]["upper_factor"] = 1.0
