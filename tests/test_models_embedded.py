"""The embedded rule reader: it answers from the feature text of the prompt alone (hand-made
descriptions of each kind), follows the rule table's thresholds at call time, beats chance on a
tiny cohort's real feature texts, and answers the same in-process and served."""

import json
import urllib.request

import pytest

from sleepvlm import text
from sleepvlm.data.cohort import COHORT_SIZES, CohortSize
from sleepvlm.data.records import STAGES
from sleepvlm.metrics import evaluate, parse_stage
from sleepvlm.models import embedded, local_model_names, running_server, user_request
from sleepvlm.models.local import chance
from sleepvlm.models.messages import to_openai_messages
from sleepvlm.prepare import prepare_dataset
from sleepvlm.rules.table import DEFAULT_RULES

QUIET = {
    "eeg": "[W.alpha, N1.lamf, N2.spindle, N3.sw20, arousal] EEG power: delta 60.0 %, theta "
    "20.0 %, alpha 10.0 %, sigma 5.0 %, beta 5.0 %; RMS 20.0 µV",
    "alpha": "[W.alpha] alpha rhythm in 10.0 % of the epoch",
    "lamf": "[N1.lamf] low-amplitude mixed-frequency EEG in 20.0 % of the epoch",
    "vertex": "[N1.vertex] no vertex sharp waves",
    "spindle": "[N2.spindle] no sleep spindles",
    "kcomplex": "[N2.kcomplex] no K complexes",
    "previous": "[N2.spindle, N2.kcomplex] (context) last half of the previous epoch: no sleep "
    "spindles and no K complexes (times in the previous epoch)",
    "sw": "[N3.sw20] slow waves (0.5–2 Hz, over 75 µV peak to peak) cover 2.0 % of the epoch: "
    "1 wave, largest 80 µV peak to peak",
    "sawtooth": "[R.sawtooth] no sawtooth wave trains",
    "arousal": "[N2.arousal_end, R.arousal_end, arousal] no arousals",
    "movement": "[major_body_movement] movement artifact in 0.0 % of the epoch",
    "rem": "[W.eyes, R.rem] no rapid eye movements",
    "sem": "[N1.sem] no slow eye movements",
    "blink": "[W.eyes] no eye blinks",
    "tone": "[W.eyes, R.atonia] (context) chin EMG tone at percentile 40 of this night's "
    "epochs, 0.90 × the night's median",
}


def describe(**changes: str) -> str:
    return "\n".join({**QUIET, **changes}.values())


N3_TEXT = describe(
    sw="[N3.sw20] slow waves (0.5–2 Hz, over 75 µV peak to peak) cover 38.5 % of the epoch: "
    "16 waves, largest 193 µV peak to peak"
)
SPINDLE_TEXT = describe(spindle="[N2.spindle] 2 sleep spindles at 4.1–5.0 s and 17.3–18.1 s")


def ask(description: str, variant: str = "expert") -> str:
    prompt = text.load_prompt("text", variant)
    return embedded.rule_reader(text.render_prompt(prompt, features=description))


@pytest.mark.parametrize("variant", ["plain", "expert"])
def test_hand_made_descriptions_get_their_stage(variant):
    assert ask(N3_TEXT, variant) == "N3"
    assert ask(SPINDLE_TEXT, variant) == "N2"
    alpha = describe(alpha="[W.alpha] alpha rhythm in 80.0 % of the epoch")
    assert ask(alpha, variant) == "W"
    rem = describe(
        rem="[W.eyes, R.rem] 3 rapid eye movements at 2.0–2.3 s, 9.1–9.4 s and 20.0–20.3 s",
        tone="[W.eyes, R.atonia] (context) chin EMG tone at percentile 5 of this night's "
        "epochs, 0.40 × the night's median",
    )
    assert ask(rem, variant) == "REM"
    lamf = describe(lamf="[N1.lamf] low-amplitude mixed-frequency EEG in 70.0 % of the epoch")
    assert ask(lamf, variant) == "N1"


def test_the_rule_windows_and_the_arousal_exception_are_read_from_the_times():
    late = describe(spindle="[N2.spindle] 1 sleep spindle at 22.0–23.0 s")
    assert embedded.rule_reader_decision(late)[0] != "N2"  # second half: not this epoch's rule
    previous = describe(
        previous="[N2.spindle, N2.kcomplex] (context) last half of the previous epoch: 1 sleep "
        "spindle at 20.1–21.0 s and no K complexes (times in the previous epoch)"
    )
    assert embedded.rule_reader_decision(previous) == ("N2", ["N2.spindle"])
    kcomplex = "[N2.kcomplex] 1 K complex at 5.0–6.0 s (largest 150 µV peak to peak)"
    assert embedded.rule_reader_decision(describe(kcomplex=kcomplex))[0] == "N2"
    with_arousal = describe(
        kcomplex=kcomplex,
        arousal="[N2.arousal_end, R.arousal_end, arousal] 1 arousal at 6.5–10.0 s",
    )
    assert embedded.rule_reader_decision(with_arousal)[0] != "N2"


def test_thresholds_come_from_the_rules_passed():
    assert embedded.rule_reader_decision(N3_TEXT)[0] == "N3"
    half = DEFAULT_RULES.with_thresholds("N3.sw20", min_epoch_fraction=0.5)
    assert embedded.rule_reader_decision(N3_TEXT, rules=half)[0] != "N3"


def test_unavailable_channels_are_not_read_as_zero():
    no_emg = describe(
        rem="[W.eyes, R.rem] 2 rapid eye movements at 2.0–2.3 s and 9.1–9.4 s",
        lamf="[N1.lamf] low-amplitude mixed-frequency EEG in 70.0 % of the epoch",
        tone="[W.eyes, R.atonia] chin EMG tone: not available (no usable EMG)",
    )
    read = embedded.read_features(no_emg)
    assert read.tone_percentile is None and read.counts["rem"] == 2
    assert embedded.rule_reader_decision(no_emg) == ("REM", ["R.rem", "N1.lamf"])
    no_eeg = describe(sw="[N3.sw20] slow waves: not available (no usable EEG)")
    assert embedded.read_features(no_eeg).shares["slow_wave"] is None


def test_only_the_description_is_read_not_the_criteria_or_other_inputs():
    criteria_only = text.load_prompt("text", "expert").system
    assert embedded.rule_reader_decision(criteria_only) == (None, [])
    sequence = to_openai_messages(user_request("EEG (µV, 25 Hz, 750 samples): 1 2 3").messages)
    answer = embedded.rule_reader(sequence)
    assert answer == embedded.NO_FEATURES_ANSWER and parse_stage(answer) is None


@pytest.fixture(scope="module")
def tiny_features(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLEEPVLM_CACHE", str(tmp_path_factory.mktemp("embedded")))
        mp.setitem(COHORT_SIZES, "tiny", CohortSize(subjects=3, hours=0.75))
        table = text.prepared_features(prepare_dataset("shhs", cohort_size="tiny"))
    return table[table["stage"].isin(STAGES)]


def test_the_rule_reader_beats_chance_on_a_tiny_cohorts_feature_texts(tiny_features):
    prompt = text.load_prompt("text", "plain")
    wires = [text.render_prompt(prompt, features=row) for _, row in tiny_features.iterrows()]
    truth, subjects = tiny_features["stage"].tolist(), tiny_features["subject"].tolist()
    reader = evaluate(truth, [embedded.rule_reader(w) for w in wires], subjects)
    floor = evaluate(truth, [chance(w) for w in wires], subjects)
    assert reader["parse_rate"] == 1.0
    assert reader["metrics"]["accuracy"] > floor["metrics"]["accuracy"] + 0.2
    assert reader["metrics"]["macro_f1"] > floor["metrics"]["macro_f1"] + 0.1
    assert reader["metrics"]["ci95"]["accuracy"][0] > floor["metrics"]["accuracy"]


def test_registered_on_import_and_served_with_the_same_answers():
    assert set(embedded.EMBEDDED) <= set(local_model_names())
    messages = text.render_prompt(text.load_prompt("text", "expert"), features=SPINDLE_TEXT)
    with running_server() as server:
        listed = json.load(urllib.request.urlopen(server.url + "/models"))
        assert "rule-reader" in {m["id"] for m in listed["data"]}
        body = json.dumps({"model": "rule-reader", "messages": messages}).encode()
        request = urllib.request.Request(
            server.url + "/chat/completions", body, {"Content-Type": "application/json"}
        )
        answer = json.load(urllib.request.urlopen(request))["choices"][0]["message"]["content"]
    assert answer == embedded.rule_reader(messages) == "N2"
