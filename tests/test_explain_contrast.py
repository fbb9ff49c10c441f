"""Contrastive decoding of SleepVLM-mini: the negative images, the contrasted scores, and the
answers and table it gives beside greedy decoding."""

import io

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from sleepvlm.explain import citations, contrast, mini, snapshots
from sleepvlm.explain.snapshots import CURVE_METRICS
from sleepvlm.splits import night_keys, nights_of
from test_explain_mini import examples, prepared, trained  # noqa: F401 (fixtures)
from test_explain_snapshots import snapshotted  # noqa: F401 (a fixture)


def _pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"))


def test_negative_images_reverse_time_or_show_nothing(examples):  # noqa: F811
    png = examples[0].image
    drawn = _pixels(png)
    mirrored = _pixels(contrast.negative_image(png, "mirrored"))
    assert mirrored.shape == drawn.shape
    assert np.array_equal(mirrored, drawn[:, ::-1])
    assert not np.array_equal(mirrored, drawn)
    blank = _pixels(contrast.negative_image(png, "blank"))
    assert blank.shape == drawn.shape and (blank == 255).all()
    with pytest.raises(mini.MiniError, match="'noise' is not one of"):
        contrast.negative_image(png, "noise")


def test_contrast_settings_are_checked():
    with pytest.raises(mini.MiniError, match="'shuffled' is not one of"):
        contrast.Contrast("shuffled", 1.0)
    with pytest.raises(mini.MiniError, match="weight >= 0"):
        contrast.Contrast("blank", -1.0)
    with pytest.raises(mini.MiniError, match="plausibility"):
        contrast.Contrast("blank", 1.0, plausibility=0.0)
    assert contrast.Contrast("mirrored", 2.0).label == "against the mirrored image, weight 2"


def test_a_setting_is_named_as_a_chapter_parameter_names_it():
    for setting in [*contrast.SETTINGS, contrast.Contrast("blank", 0.5)]:
        assert contrast.Contrast.from_name(setting.name) == setting
    assert contrast.Contrast.from_name("blank-4-evidence") == contrast.Contrast(
        "blank", 4.0, evidence_only=True
    )
    for wrong in ("blank", "blank-x", "blank-4-whole", "blank-4-evidence-2"):
        with pytest.raises(mini.MiniError, match="is not <negative>-<weight>"):
            contrast.Contrast.from_name(wrong)
    with pytest.raises(mini.MiniError, match="'noise' is not one of"):
        contrast.Contrast.from_name("noise-4")


def test_contrasted_scores_prefer_what_the_real_image_makes_more_likely():
    # token 0: the stage's template, as likely with either image; token 1: likelier with the
    # real image; token 2: implausible with the real image, however unlikely with the negative
    real = torch.log(torch.tensor([[0.5, 0.45, 0.05]]))
    negative = torch.log(torch.tensor([[0.5, 0.05, 0.45]]))
    scores = torch.cat([real, negative])
    greedy = contrast.ContrastiveLogits(1, 0.0, 0.1)(None, scores)
    assert greedy.argmax(-1).tolist() == [0, 0]
    pulled = contrast.ContrastiveLogits(1, 1.0, 0.2)(None, scores)
    assert pulled.argmax(-1).tolist() == [1, 1]  # both rows write the same token
    assert torch.isinf(pulled[:, 2]).all()  # below a fifth of the best: never written
    loose = contrast.ContrastiveLogits(1, 1.0, 0.05)(None, scores)
    assert torch.isfinite(loose[:, 2]).all()
    with pytest.raises(mini.MiniError, match="expects 4 rows"):
        contrast.ContrastiveLogits(2, 1.0, 0.1)(None, scores)


def test_weight_zero_answers_as_greedy_decoding_and_only_the_real_images(
    trained,  # noqa: F811
    examples,  # noqa: F811
):
    model = mini.MiniModel.load(trained[0])
    pngs = [e.image for e in examples[:3]]
    greedy = model.generate(pngs)
    assert model.generate(pngs, contrast=contrast.Contrast("blank", 0.0)) == greedy
    pulled = model.generate_scored(pngs, contrast=contrast.Contrast("mirrored", 3.0))
    assert len(pulled) == len(pngs)
    for answer in pulled:
        assert len(answer.confidence) == len(answer.text)
        assert ((answer.confidence > 0) & (answer.confidence <= 1)).all()
    batched = model.answer_all(pngs, batch_size=2, contrast=contrast.Contrast("mirrored", 3.0))
    assert [a.text for a in batched] == [a.text for a in pulled]  # batching changes nothing


def test_contrast_table_scores_greedy_and_each_setting_on_the_same_epochs(
    trained,  # noqa: F811
    examples,  # noqa: F811
    monkeypatch,
):
    model = mini.MiniModel.load(trained[0])
    pngs = [e.image for e in examples[:4]]
    inputs = {"a": (pngs, ["truth"] * 4), "b": (pngs[:2], ["truth"] * 2)}
    seen = []

    def point(texts, truth, tolerance_s):
        seen.append((len(texts), tolerance_s))
        return dict.fromkeys(CURVE_METRICS, 0.5)

    monkeypatch.setattr(snapshots, "score_point", point)
    settings = [contrast.Contrast("mirrored", 1.0), contrast.Contrast("blank", 2.0)]
    table = contrast.contrast_table(model, inputs, settings, tolerance_s=2.0)
    assert table["decoding"].tolist() == [
        contrast.GREEDY,
        contrast.GREEDY,
        settings[0].label,
        settings[0].label,
        settings[1].label,
        settings[1].label,
    ]
    assert table["epochs"].tolist() == [4, 2] * 3
    assert seen == [(4, 2.0), (2, 2.0)] * 3


def test_contrast_text_says_what_the_chosen_setting_changed():
    blank = contrast.Contrast("blank", 2.0)
    rows = [
        (contrast.GREEDY, "dcsm", 0.77, 0.42, 0.49, 1.0, 0.80),
        (contrast.GREEDY, "isruc", 0.59, 0.32, 0.32, 1.0, 0.82),
        ("mirrored 1", "dcsm", 0.74, 0.42, 0.50, 1.0, 0.79),
        ("mirrored 1", "isruc", 0.55, 0.32, 0.31, 1.0, 0.81),
        (blank.label, "dcsm", 0.65, 0.49, 0.43, 1.0, 0.69),
        (blank.label, "isruc", 0.41, 0.33, 0.22, 1.0, 0.73),
    ]
    table = pd.DataFrame(rows, columns=["decoding", "dataset", *CURVE_METRICS])
    text = contrast.contrast_text(table, blank, "dcsm")
    assert text.startswith(f"Chosen on DCSM's held-out epochs: decoding {blank.label}.")
    assert "precision 0.37 → 0.41" in text
    assert "absent event 81% → 71%" in text
    assert "κ 0.68 → 0.53" in text
    nothing = contrast.contrast_text(table, None, "isruc")
    assert nothing.startswith("On ISRUC's held-out epochs no setting raised")


def _table(rows) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["decoding", "dataset", "kappa", "precision"])
    return frame.assign(comprehensiveness=0.5, coherence=1.0, ungrounded_share=0.5)


def test_the_chosen_setting_raises_precision_most_and_keeps_kappa():
    whole = contrast.Contrast("blank", 4.0)
    evidence = contrast.Contrast("blank", 4.0, evidence_only=True)
    mirrored = contrast.Contrast("mirrored", 1.0)
    table = _table(
        [
            (contrast.GREEDY, "dcsm", 0.77, 0.42),
            (whole.label, "dcsm", 0.66, 0.49),  # more precise, at a cost in kappa
            (evidence.label, "dcsm", 0.77, 0.47),
            (mirrored.label, "dcsm", 0.765, 0.43),
            (contrast.GREEDY, "isruc", 0.58, 0.30),
            (evidence.label, "isruc", 0.58, 0.28),
        ]
    )
    settings = [whole, evidence, mirrored]
    assert contrast.choose_contrast(table, settings, "dcsm") == evidence
    assert contrast.choose_contrast(table, settings, "dcsm", kappa_slack=0.2) == whole
    assert contrast.choose_contrast(table, [mirrored], "dcsm") == mirrored  # within the slack
    assert contrast.choose_contrast(table, settings, "isruc") is None  # none raised it
    assert contrast.choose_contrast(table, settings, "shhs") is None  # not measured


def test_test_nights_are_scored_on_the_answers_decoded_with_the_setting(snapshotted):  # noqa: F811
    folder, data = snapshotted
    model = mini.MiniModel.load(folder)
    test = data.manifest[data.manifest["split"] == "test"]
    nights = nights_of(test, 1, 0)
    greedy = contrast.Contrast("mirrored", 0.0)
    scored = contrast.score_nights(model, data, nights, greedy)
    pngs, truth = citations.night_inputs(data, nights, model.image_options())
    assert len(scored) == len(truth) == int(night_keys(test).isin(nights).sum())
    assert scored["answer"].tolist() == model.generate(pngs)  # weight 0: greedy's answers
    assert scored["stage"].tolist() == [a.stage for a in truth]
