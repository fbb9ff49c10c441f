"""SleepVLM-mini's training levers: a lever's run trains the mini with its change and scores the
finished model as the training curve does; its records are read into the lever table, which
marks what is missing and what was measured on other code."""

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from sleepvlm.cli import main
from sleepvlm.explain import citations, faithfulness, guidance, levers, mini, perception, snapshots
from sleepvlm.explain.train import training_code_hash
from sleepvlm.metrics import MIN_PROBE_SUPPORT, PROBE_GUIDANCE, point_value
from sleepvlm.params import EXTERNAL, WITHIN
from test_explain_mini import TINY, prepared  # noqa: F401 (a fixture)
from test_explain_snapshots import snapshotted  # noqa: F401 (a fixture)


def test_levers_change_known_settings_and_are_found_by_name():
    fields = {f.name for f in dataclasses.fields(mini.MiniConfig)}
    names = [lever.name for lever in levers.LEVERS]
    assert len(set(names)) == len(names) and names[:2] == [levers.DEFAULT, levers.SEED_NOISE]
    for lever in levers.LEVERS:
        assert set(lever.changes) <= fields, lever.name
        config = dataclasses.replace(mini.MiniConfig(), **lever.changes)
        assert (config == mini.MiniConfig()) == (lever.name == levers.DEFAULT)
    assert levers.lever_named("seed-1").changes == {"seed": 1}
    with pytest.raises(levers.LeverError, match="no lever 'nope'; the levers are: default"):
        levers.lever_named("nope")


def test_a_levers_run_is_scored_as_the_curves_last_point_and_read_back(prepared, tmp_path):  # noqa: F811
    base = dataclasses.replace(TINY, grounding_steps=6)
    run = dict(
        train_dataset="dcsm",
        eval_datasets=["dcsm"],
        data_dirs={"dcsm": prepared.source},
        base=base,
        per_class=3,
        max_nights=1,
        max_epochs=6,
    )
    records = levers.run_lever(levers.lever_named(levers.DEFAULT), **run)
    (record,) = records
    assert record["summary"] == levers.LEVER and record["lever"] == levers.DEFAULT
    assert record["config"] == dataclasses.asdict(base) and record["code"] == training_code_hash()
    assert record["n"] == 6 and record["grounding_steps_done"] == 6
    assert set(record["metrics"]) == {*levers.LEVER_METRICS, *levers.CHECKED_METRICS}
    assert set(record["checked_by"]) == {PROBE_GUIDANCE, MIN_PROBE_SUPPORT, "probe"}
    assert record["checked_by"]["probe"] == levers.CHECKED_PROBE
    checked_precision = record["metrics"][levers.CHECKED + "precision"]
    assert checked_precision is None or 0 <= checked_precision <= 1
    folders = sorted((tmp_path / "cache" / "models").glob("sleepvlm-mini-dcsm-*"))
    curve = snapshots.training_curve(folders[0], {"dcsm": prepared}, max_epochs=6)
    last = curve[curve["step"] == curve["step"].max()].iloc[0]
    for metric in levers.LEVER_METRICS:  # the same model on the same epochs
        value = record["metrics"][metric]
        assert value == pytest.approx(last[metric], nan_ok=True) or pd.isna(last[metric])

    paths = levers.write_lever(records, tmp_path / "levers")
    assert [p.name for p in paths] == ["default__dcsm.json"]
    seeded = levers.run_lever(levers.lever_named(levers.SEED_NOISE), **run)
    assert seeded[0]["config"]["seed"] == 1
    levers.write_lever(seeded, tmp_path / "levers")
    table = levers.lever_table(levers.load_levers(tmp_path / "levers"), "dcsm")
    assert table["lever"].tolist() == [lever.name for lever in levers.LEVERS]
    measured = table.set_index("lever")
    assert measured.loc[levers.DEFAULT, "Δ precision"] == 0 or pd.isna(
        measured.loc[levers.DEFAULT, "precision"]
    )
    assert measured.loc[levers.DEFAULT, "code"] == "this"
    assert measured.loc["presence-loss", "code"] == "not measured"

    stale = json.loads(paths[0].read_text())
    paths[0].write_text(json.dumps({**stale, "code": "0" * 16}))
    table = levers.lever_table(levers.load_levers(tmp_path / "levers"), "dcsm")
    assert table.set_index("lever").loc[levers.DEFAULT, "code"] == "other"
    assert "(default measured on other code" in levers.lever_text(table)


def test_checked_metrics_are_the_answers_after_the_chosen_guidance_and_cut(
    snapshotted,  # noqa: F811
    monkeypatch,
):
    folder, data = snapshotted
    model = mini.MiniModel.load(folder)
    inputs = snapshots.held_out_inputs({"dcsm": data}, model.image_options(), 1, 6)
    monkeypatch.setitem(levers.CHECKED_PROBE, "per_class", 3)
    # a model this small raises no precision: the choices are made for it, to be followed
    monkeypatch.setattr(guidance, "choose_guidance", lambda table, dataset: 8.0)
    monkeypatch.setattr(citations, "choose_min_confidence", lambda curve: 0.5)
    calls = {"answer_all": 0, "probabilities": 0}
    answer_all, probabilities = mini.MiniModel.answer_all, perception.EventProbe.probabilities

    def counted(name, method):
        def call(*args, **kwargs):
            calls[name] += 1
            return method(*args, **kwargs)

        return call

    monkeypatch.setattr(mini.MiniModel, "answer_all", counted("answer_all", answer_all))
    monkeypatch.setattr(
        perception.EventProbe, "probabilities", counted("probabilities", probabilities)
    )
    checked = levers.checked_metrics(model, data, inputs, "dcsm", max_nights=1)
    # one answer per image and weight (greedy included), one reading of the probe per image set
    assert calls == {"answer_all": 1 + len(guidance.WEIGHTS), "probabilities": 1}
    monkeypatch.setattr(mini.MiniModel, "answer_all", answer_all)
    monkeypatch.setattr(perception.EventProbe, "probabilities", probabilities)
    pngs, found = inputs["dcsm"]
    greedy = [a.text for a in model.answer_all(pngs)]
    assert [a.text for a in checked.greedy["dcsm"]] == greedy
    weight, least = checked.choices[PROBE_GUIDANCE], checked.choices[MIN_PROBE_SUPPORT]
    assert (weight, least) == (8.0, 0.5)
    probe = perception.fit_probes(model, data, 3, 1, reads={perception.PATCH_STATES: False})
    guide = guidance.ProbeGuidance(probe[perception.PATCH_STATES], weight)
    answers = perception.probe_answers(model, pngs, probe[perception.PATCH_STATES], guide)
    cut = [citations.cite_confident(a, least) for a in answers]
    expected = faithfulness.faithfulness_metrics(faithfulness.score_answers(cut, found))
    for metric in faithfulness.FAITHFULNESS_GOALS:
        got, want = checked.metrics["dcsm"][levers.CHECKED + metric], point_value(expected[metric])
        assert got == pytest.approx(want, nan_ok=True) or (got is None and want is None)

    monkeypatch.setattr(guidance, "can_guide", lambda tokenizer: False)
    unguided = levers.checked_metrics(model, data, inputs, "dcsm", max_nights=1)
    assert (
        unguided.choices[PROBE_GUIDANCE] is None
    )  # a tokenizer without time tokens is only checked


def _records(precision: dict[str, tuple[float, float]], kappa: float = 0.7) -> pd.DataFrame:
    """Lever records as load_levers reads them: lever -> (precision on DCSM, on SHHS)."""
    rows = []
    for name, values in precision.items():
        for dataset, value in zip(("dcsm", "shhs"), values, strict=True):
            rows.append(
                {
                    "lever": name,
                    "dataset": dataset,
                    "train_dataset": "dcsm",
                    "kappa": kappa,
                    "precision": value,
                    "comprehensiveness": 0.4,
                    "coherence": 1.0,
                    "ungrounded_share": 0.7,
                    "train_seconds": 900.0,
                    "code": training_code_hash(),
                }
            )
    return pd.DataFrame(rows)


def test_the_lever_table_reads_each_lever_against_the_default_and_the_seed_noise():
    records = _records(
        {"default": (0.42, 0.40), "seed-1": (0.40, 0.41), "presence-loss": (0.50, 0.30)}
    )
    table = levers.lever_table(records, "dcsm")
    rows = table.set_index(["lever", "setting"])
    assert rows.loc[("presence-loss", WITHIN), "Δ precision"] == pytest.approx(0.08)
    assert rows.loc[("presence-loss", EXTERNAL), "Δ precision"] == pytest.approx(-0.10)
    assert rows.loc[("presence-loss", WITHIN), "train_minutes"] == 15
    assert rows.loc[("presence-loss", WITHIN), "changes"] == "presence_weight=1.0"
    text = levers.lever_text(table)
    assert text.startswith("3 of 14 levers have records.")
    assert "the highest precision is presence-loss's, 0.50 (goal 0.75)" in text
    assert "moves precision by 0.02 and κ by 0.00" in text
    assert text.endswith("levers that move precision further: presence-loss +0.08.")
    quiet = levers.lever_table(_records({"default": (0.42, 0.4), "seed-1": (0.3, 0.4)}), "dcsm")
    assert levers.lever_text(quiet).endswith("levers that move precision further: none.")
    no_seed = levers.lever_table(_records({"default": (0.42, 0.4)}), "dcsm")
    assert levers.lever_text(no_seed).endswith("so the noise is not known.")
    nothing = levers.lever_table(pd.DataFrame(), "dcsm")
    assert (nothing["code"] == "not measured").all()
    assert levers.lever_text(nothing).startswith("The default lever has no record")


def test_the_checked_columns_read_the_records_that_hold_them():
    records = _records({"default": (0.42, 0.40), "no-context": (0.44, 0.43)})
    checked = {"precision": 0.87, "comprehensiveness": 0.5, "coherence": 1.0}
    checked["ungrounded_share"] = 0.16
    for metric, value in checked.items():
        records[levers.CHECKED + metric] = np.where(records["lever"] == "no-context", value, np.nan)
    records["checked_by"] = [{"probe": levers.CHECKED_PROBE}] * len(records)
    table = levers.lever_table(records, "dcsm").set_index(["lever", "setting"])
    assert table.loc[("no-context", WITHIN), levers.CHECKED + "precision"] == 0.87
    assert pd.isna(table.loc[("default", WITHIN), levers.CHECKED + "precision"])
    text = levers.checked_text(table.reset_index())
    assert "absent event: no-context 0.87 / 0.50 / 16%." in text
    assert "second seed" not in text  # neither the default nor the seed has them
    assert text.endswith("1 other lever record was not checked with this build's probe.")
    # checked by a probe of other settings: not read as this build's
    records["checked_by"] = [{"probe": {**levers.CHECKED_PROBE, "neighbours": 0}}] * len(records)
    older = levers.lever_table(records, "dcsm")
    assert older[levers.CHECKED + "precision"].isna().all()
    assert levers.checked_text(older).startswith("No lever record holds")
    both = _records({"default": (0.42, 0.40), "seed-1": (0.40, 0.41)})
    both["checked_by"] = [{"probe": levers.CHECKED_PROBE}] * len(both)
    for metric, value in checked.items():
        records_value = np.where(both["lever"] == "seed-1", value - 0.05, value)
        both[levers.CHECKED + metric] = records_value
    text = levers.checked_text(levers.lever_table(both, "dcsm"))
    assert text.endswith("A second seed of the default moves them by 0.05 / 0.05 / 5%.")
    bare = levers.lever_table(_records({"default": (0.42, 0.40)}), "dcsm")
    assert levers.checked_text(bare).startswith("No lever record holds")


def test_the_default_record_is_compared_with_this_builds_curve():
    table = levers.lever_table(_records({"default": (0.42, 0.40)}), "dcsm")
    curve = pd.DataFrame(
        {
            "step": [100, 200, 200],
            "setting": [WITHIN, WITHIN, EXTERNAL],
            "kappa": [0.1, 0.7, 0.5],
            "precision": [0.1, 0.42, 0.3],
            "comprehensiveness": [0.1, 0.4, 0.3],
            "coherence": [0.1, 1.0, 1.0],
            "ungrounded_share": [0.1, 0.7, 0.7],
        }
    )
    assert levers.agreement_text(table, curve).endswith(
        "0.42 and 0.70 on the same epochs: they agree."
    )
    moved = curve.assign(precision=[0.1, 0.5, 0.3])
    assert "they differ by up to 0.08" in levers.agreement_text(table, moved)
    assert levers.agreement_text(table, curve.iloc[:0]).startswith("There is no default record")


def test_the_command_lists_the_levers_and_names_an_unknown_one(capsys):
    assert main(["lever", "--list"]) == 0
    assert "presence-loss: a head on each image token" in capsys.readouterr().out
    assert main(["lever", "nope"]) == 2
    assert "no lever 'nope'" in capsys.readouterr().err


def test_the_code_hash_follows_training_code_not_comments_or_answering(tmp_path):
    def hash_of(source: str) -> str:
        path = tmp_path / f"module_{abs(hash(source))}.py"
        path.write_text(source)
        return training_code_hash((SimpleNamespace(__file__=str(path)),))

    plain = hash_of("x = 1\n")
    assert hash_of("x = 1  # measured: precision 0.42\n") == plain
    assert hash_of("x = 2\n") != plain
    answering = "class MiniModel:\n    def generate(self, guide=None):\n        return guide\n"
    checked = "if TYPE_CHECKING:\n    from a import B\n"
    assert hash_of(f"x = 1\n{answering}{checked}") == plain
    assert hash_of("x = 1\nclass MiniConfig:\n    y = 2\n") != plain


def test_more_steps_or_size_is_read_against_the_default_and_the_seed():
    records = _records(
        {"default": (0.42, 0.40), "seed-1": (0.40, 0.41), "larger-language-model": (0.30, 0.30)}
    )
    records.loc[records["lever"] == "larger-language-model", "kappa"] = 0.5
    table = levers.lever_table(records, "dcsm")
    text = levers.scale_text(table)
    assert "twice the grounding steps (longer-grounding) has no record" in text
    assert (
        "the language model twice as wide and deep (larger-language-model): κ -0.20, precision "
        "-0.12, comprehensiveness +0.00 (larger than a second seed's change: κ, precision)"
    ) in text
    assert "after the answer-time levers" not in text  # no record holds the checked metrics
    without_seed = levers.lever_table(records[records["lever"] != "seed-1"], "dcsm")
    assert "second seed" not in levers.scale_text(without_seed)
    seed_silent = records.copy()
    seed_silent.loc[
        seed_silent["lever"] == "seed-1", ["kappa", "precision", "comprehensiveness"]
    ] = None
    assert "second seed" not in levers.scale_text(levers.lever_table(seed_silent, "dcsm"))
    nothing = levers.lever_table(pd.DataFrame(), "dcsm")
    assert levers.scale_text(nothing).startswith("The default lever has no record")
