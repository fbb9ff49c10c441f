import dataclasses

import numpy as np
import pandas as pd
import pytest
from scipy import signal
from sklearn.metrics import cohen_kappa_score

from sleepvlm.data.nights import statistics_table
from sleepvlm.data.realism import hypnogram_stats
from sleepvlm.data.records import EPOCH_S, EVENT_COLUMNS, EVENT_KINDS, STAGES, DataError
from sleepvlm.data.simulate import (
    _PARAM_NAMES,
    _PARAMS,
    AMPLITUDE_SD,
    CENTERS,
    PERSON_SD,
    SimulationError,
    _person_signature,
    _subject_traits,
    _transition_mix,
    _weaken_cues,
    simulate_hypnogram,
    simulate_night,
    simulate_scoring,
)
from sleepvlm.rules.detectors import detect_slow_waves


@pytest.fixture(scope="module")
def shhs_night():
    return simulate_night("shhs", 4, hours=8.0)


@pytest.fixture(scope="module")
def isruc_nights():
    return [simulate_night("isruc", s, hours=8.0) for s in (0, 1)]


def _epoch_of(events: pd.DataFrame) -> np.ndarray:
    return (events["onset"] // EPOCH_S).astype(int).to_numpy()


def test_same_seed_gives_identical_night():
    a = simulate_night("shhs", 3, seed=1, hours=0.5)
    b = simulate_night("shhs", 3, seed=1, hours=0.5)
    for ch in a.signals:
        np.testing.assert_array_equal(a.signals[ch], b.signals[ch])
    np.testing.assert_array_equal(a.stages, b.stages)
    pd.testing.assert_frame_equal(a.events, b.events)


def test_other_seed_subject_or_center_differ():
    base = simulate_night("isruc", 3, seed=0, hours=0.5)
    other_seed = simulate_night("isruc", 3, seed=1, hours=0.5)
    other_subject = simulate_night("isruc", 4, seed=0, hours=0.5)
    other_center = simulate_night("dcsm", 3, seed=0, hours=0.5)
    x = base.signals["C4-A1"]
    assert not np.allclose(x, other_seed.signals["C4-A1"])
    assert not np.allclose(x, other_subject.signals["C4-A1"])
    assert other_center.channels != base.channels
    assert other_seed.night == "n2" and base.night == "n1"


@pytest.mark.parametrize("center", sorted(CENTERS))
def test_native_channels_rates_and_metadata(center):
    rec = simulate_night(center, 7, hours=0.5)
    spec = CENTERS[center]
    assert rec.subject == f"sim-{center}-s007"
    assert rec.dataset == center and rec.simulated and rec.line_freq == spec.line_freq
    assert rec.roles == spec.channels
    for role, ch in spec.channels.items():
        assert rec.sfreq[ch] == spec.rates[role]
        assert rec.signals[ch].dtype == np.float32
        assert len(rec.signals[ch]) == int(0.5 * 3600 * spec.rates[role])
    assert len(rec.stages) == 60
    assert set(rec.stages) <= set(STAGES)
    assert list(rec.events.columns) == list(EVENT_COLUMNS)
    assert ("scorer2" in rec.other_scorers) == (spec.n_scorers == 2)


def test_centers_differ_in_hardware():
    specs = list(CENTERS.values())
    assert len({s.highpass for s in specs}) == 3
    assert len({s.gain for s in specs}) == 3
    assert len({s.line_noise for s in specs}) == 3
    assert {s.line_freq for s in specs} == {50.0, 60.0}


def _median_epoch_sd(rec, role: str, stage: str = "N2") -> float:
    """Median SD of the ``stage`` epochs in 15-40 Hz: one stage, so that centers whose people
    sleep differently are compared like for like, and below every center's mains."""
    ch = rec.role(role)
    per = int(EPOCH_S * rec.sfreq[ch])
    sos = signal.butter(4, (15, 40), btype="bandpass", fs=rec.sfreq[ch], output="sos")
    x = signal.sosfiltfilt(sos, rec.signals[ch])
    sd = x[: len(x) // per * per].reshape(-1, per).std(axis=1)
    return float(np.median(sd[np.asarray(rec.stages[: len(sd)]) == stage]))


def test_centers_differ_in_their_signals():
    """Chin EMG set-up and artifact load show in the recordings, not only in the specs (over 16
    people: a center's people differ, so a handful cannot show its median)."""
    nights = {c: [simulate_night(c, s, hours=2.0) for s in range(16)] for c in CENTERS}
    emg = {c: np.median([_median_epoch_sd(r, "emg") for r in recs]) for c, recs in nights.items()}
    assert emg["shhs"] < emg["dcsm"] < emg["isruc"]
    assert emg["isruc"] > 1.5 * emg["shhs"]
    artifacts = {
        c: sum((r.events["kind"] == "artifact").sum() for r in recs) for c, recs in nights.items()
    }
    assert artifacts["isruc"] > 1.4 * artifacts["dcsm"]


def test_weak_stage_cues_are_drawn_per_person_and_blur_only_their_stages():
    rng = np.random.default_rng(0)
    people = [_subject_traits(rng, CENTERS["isruc"]) for _ in range(600)]
    assert np.mean([p["alpha_intrusion"] for p in people]) == pytest.approx(
        CENTERS["isruc"].alpha_intrusion_share, abs=0.05
    )
    assert np.mean([p["rem_without_atonia"] for p in people]) == pytest.approx(
        CENTERS["isruc"].rem_without_atonia_share, abs=0.05
    )
    stages = np.array(["W", "N1", "N2", "N3", "REM"], dtype=object)
    base = np.ones((len(stages), len(_PARAM_NAMES)))
    person = {"alpha_amp": 1.0, "alpha_intrusion": 1.0, "rem_without_atonia": 1.0, "sedative": 0.0}
    blurred = base.copy()
    _weaken_cues(blurred, stages, person)
    changed = (blurred != base).any(axis=1)
    assert changed.tolist() == [False, False, True, True, True]
    alpha = _PARAM_NAMES.index("alpha")
    assert (blurred[2:4, alpha] > base[2:4, alpha]).all()
    assert blurred[4, _PARAM_NAMES.index("emg")] > base[4, _PARAM_NAMES.index("emg")]
    untouched = base.copy()
    _weaken_cues(untouched, stages, {**person, "alpha_intrusion": 0.0, "rem_without_atonia": 0.0})
    np.testing.assert_array_equal(untouched, base)


def test_a_sedative_adds_fast_activity_through_sleep_only():
    stages = np.array(["W", "N1", "N2", "N3", "REM"], dtype=object)
    base = np.ones((len(stages), len(_PARAM_NAMES)))
    person = {"alpha_amp": 1.0, "alpha_intrusion": 0.0, "rem_without_atonia": 0.0, "sedative": 1.0}
    sedated = base.copy()
    _weaken_cues(sedated, stages, person)
    beta = _PARAM_NAMES.index("beta_pk")
    assert sedated[0, beta] == base[0, beta]
    assert (sedated[1:, beta] > base[1:, beta]).all()
    assert (np.delete(sedated, beta, axis=1) == np.delete(base, beta, axis=1)).all()


def test_the_clinic_sees_every_age_and_more_people_on_sedatives():
    rng = np.random.default_rng(1)
    people = {c: [_subject_traits(rng, CENTERS[c]) for _ in range(600)] for c in CENTERS}
    age_spread = {c: np.std([p["age"] for p in people[c]]) for c in CENTERS}
    # SHHS recruited adults of 40 and over; ISRUC's patients were 20 to 85
    assert age_spread["shhs"] < age_spread["dcsm"] < age_spread["isruc"]
    for center, group in people.items():
        assert np.mean([p["sedative"] for p in group]) == pytest.approx(
            CENTERS[center].sedative_share, abs=0.05
        )
    sedated = [p for p in people["isruc"] if p["sedative"]]
    assert np.mean([p["spindle_rate"] for p in sedated]) > np.mean(
        [p["spindle_rate"] for p in people["isruc"] if not p["sedative"]]
    )


def test_people_differ_more_where_the_center_sees_more_kinds_of_people():
    rng = np.random.default_rng(3)
    listed = _PARAMS > 0
    for spread in (1.0, 2.0):
        center = dataclasses.replace(CENTERS["dcsm"], person_spread=spread)
        factors = np.log(
            [_person_signature(rng, center)[listed] / _PARAMS[listed] for _ in range(300)]
        )
        # each stage's own signature varies, entry by entry, not one factor for the whole table
        assert factors.std(axis=0).mean() == pytest.approx(PERSON_SD * spread, rel=0.1)
        assert np.abs(np.corrcoef(factors[:, :2].T)[0, 1]) < 0.2
        emg = np.log([_subject_traits(rng, center)["emg_scale"] for _ in range(600)])
        assert emg.std() == pytest.approx(AMPLITUDE_SD["emg"] * spread, rel=0.1)
    assert CENTERS["isruc"].person_spread > CENTERS["dcsm"].person_spread


def test_ambiguous_stretches_cover_the_share_their_rate_sets():
    stages = np.array(["N2"] * 20000, dtype=object)  # no stage change: only stretches mix
    covered = {
        share: (_transition_mix(np.random.default_rng(2), stages, share)[1] > 0).mean()
        for share in (0.3, 0.65)
    }
    for share, seen in covered.items():  # stretches may overlap
        assert seen == pytest.approx(1 - np.exp(-share), abs=0.04)


def test_hypnogram_population_structure():
    shares, hypnograms = [], {}
    for i in range(40):
        rng = np.random.default_rng(i)
        hyp = simulate_hypnogram(rng, 960, age=rng.uniform(0.2, 0.8))
        shares.append(hypnogram_stats(hyp)["shares"])
        hypnograms[i] = hyp
        assert hyp[0] == "W"
    mean = pd.DataFrame(shares).mean()
    assert 0.07 <= mean["W"] <= 0.16
    assert 0.02 <= mean["N1"] <= 0.08  # generating stage; scorers add N1 at the boundaries
    assert 0.45 <= mean["N2"] <= 0.60
    assert 0.10 <= mean["N3"] <= 0.19
    assert 0.16 <= mean["REM"] <= 0.24
    median = statistics_table(hypnograms).median()
    # real nights (DOD-H/DOD-O): REM about 1.5-2.5 h after sleep onset, N3 early but not all in
    # the first cycle (median share in the first third 0.5-0.65)
    assert 80 <= median["rem_latency_min"] <= 140
    assert 0.5 <= median["n3_third_1"] <= 0.75
    assert median["rem_third_3"] > median["rem_third_1"]


def test_apnea_fragments_the_night_and_delays_rem():
    def medians(apnea):
        nights = {
            i: simulate_hypnogram(np.random.default_rng(i), 960, age=0.4, apnea=apnea)
            for i in range(25)
        }
        return statistics_table(nights).median()

    healthy, patient = medians(0.0), medians(0.8)
    assert patient["awakenings_per_h"] > 1.8 * healthy["awakenings_per_h"]
    assert patient["stage_changes_per_h"] > 1.5 * healthy["stage_changes_per_h"]
    assert patient["rem_latency_min"] > healthy["rem_latency_min"] + 15
    assert patient["share_N3"] < healthy["share_N3"]
    assert patient["sleep_efficiency"] < healthy["sleep_efficiency"]


def test_older_subjects_have_less_n3_and_more_wake():
    young = [simulate_hypnogram(np.random.default_rng(i), 960, age=0.1) for i in range(15)]
    old = [simulate_hypnogram(np.random.default_rng(i), 960, age=0.9) for i in range(15)]
    assert np.mean([np.mean(h == "N3") for h in old]) < np.mean([np.mean(h == "N3") for h in young])
    assert np.mean([np.mean(h == "W") for h in old]) > np.mean([np.mean(h == "W") for h in young])


def test_every_event_kind_is_drawn_where_it_belongs(shhs_night):
    rec = shhs_night
    truth = rec.other_scorers["truth"]
    ev = rec.events
    drawn = set(ev["kind"])
    assert drawn == set(EVENT_KINDS)

    def share_in(kind, stages):
        e = ev[ev["kind"] == kind]
        return np.isin(truth[_epoch_of(e)], stages).mean()

    assert share_in("spindle", ["N2", "N3"]) > 0.85
    assert share_in("spindle", ["N2"]) > 0.7
    assert share_in("kcomplex", ["N2", "N3"]) > 0.85
    assert share_in("kcomplex", ["N3"]) == 0  # in N3 a K complex is listed as a slow wave
    assert share_in("slow_wave", ["N2", "N3"]) > 0.95
    # vertex waves mark N1, and appear too where N2, drowsy wake or REM carry N1 features
    assert share_in("vertex", ["N1", "N2"]) > 0.8
    assert share_in("vertex", ["N1"]) > 0.35
    assert share_in("rem", ["REM", "W"]) > 0.9
    assert share_in("sawtooth", ["REM"]) > 0.8
    assert share_in("alpha", ["W"]) > 0.6
    assert share_in("blink", ["W"]) > 0.85
    sw = ev[ev["kind"] == "slow_wave"]
    in_n3 = truth[_epoch_of(sw)] == "N3"
    assert (sw["amplitude"][in_n3] >= 75).all()
    assert sw["duration"].between(0.5, 2.0).all()
    spindles = ev[ev["kind"] == "spindle"]
    assert spindles["duration"].between(0.5, 2.0).all()
    assert (ev["onset"] >= 0).all() and (ev["onset"] < rec.duration()).all()


def test_slow_wave_coverage_follows_aasm(shhs_night):
    rec = shhs_night
    truth = rec.other_scorers["truth"]
    sw = rec.events[rec.events["kind"] == "slow_wave"]
    big = sw[sw["amplitude"] >= 75]
    coverage = np.bincount(_epoch_of(big), weights=big["duration"], minlength=len(truth)) / EPOCH_S
    assert (truth == "N3").sum() > 20
    assert coverage[truth == "N3"].min() >= 0.2
    assert coverage[truth == "N2"].max() < 0.2


@pytest.fixture(scope="module")
def dcsm_night():
    return simulate_night("dcsm", 2, hours=3.0)


def _overlaps_any(onset, stop, events):
    on = events["onset"].to_numpy()
    off = on + events["duration"].to_numpy()
    return np.array([((on < b) & (off > a)).any() for a, b in zip(onset, stop, strict=True)])


@pytest.mark.parametrize("night", ["shhs_night", "dcsm_night"])
def test_every_slow_wave_in_the_signal_is_listed(night, request):
    """The NREM background alone holds (almost) no wave of AASM slow-wave size: the >= 75 µV
    0.5-2 Hz cycles found in N2/N3 EEG are the listed slow waves (or K complexes, artifacts)."""
    rec = request.getfixturevalue(night)
    ch = rec.role("eeg")
    found = detect_slow_waves(rec.signals[ch], rec.sfreq[ch], ch)
    stage = rec.other_scorers["truth"][_epoch_of(found)]
    found = found[np.isin(stage, ["N2", "N3"])]
    listed = rec.events[rec.events["kind"].isin(["slow_wave", "kcomplex", "artifact"])]
    listed_ok = _overlaps_any(found["onset"], found["onset"] + found["duration"], listed)
    assert len(found) > 500
    assert listed_ok.mean() > 0.97


def _sigma_envelope(rec):
    ch = rec.role("eeg")
    fs = rec.sfreq[ch]
    sos = signal.butter(4, [11.0, 16.0], "bandpass", fs=fs, output="sos")
    return np.abs(signal.hilbert(signal.sosfiltfilt(sos, rec.signals[ch]))), fs


def test_listed_spindle_extent_is_its_half_amplitude_body(dcsm_night):
    env, fs = _sigma_envelope(dcsm_night)
    sp = dcsm_night.events[dcsm_night.events["kind"] == "spindle"]
    sp = sp[sp["amplitude"] >= 30]
    assert len(sp) > 50
    on, off = sp["onset"].to_numpy(), (sp["onset"] + sp["duration"]).to_numpy()
    at = lambda t: env[np.round(t * fs).astype(int)]  # noqa: E731
    edge = (at(on) + at(off)) / 2
    center = at((on + off) / 2)
    assert 0.4 < np.median(edge / center) < 0.7
    assert sp["duration"].between(0.5, 2.0).all()


def test_listed_rem_is_the_rapid_deflection(shhs_night):
    rec = shhs_night
    ch = rec.role("eog")
    fs = rec.sfreq[ch]
    x = rec.signals[ch]
    rem = rec.events[rec.events["kind"] == "rem"]
    rem = rem[(rem["amplitude"] >= 100) & (rem["onset"] + rem["duration"] + 0.02 < len(x) / fs)]
    at = lambda t: x[np.round(t * fs).astype(int)]  # noqa: E731
    step = np.abs(at(rem["onset"] + rem["duration"] + 0.02) - at(rem["onset"] - 0.02))
    assert (rem["duration"] < 0.25).all()
    assert np.median(step / rem["amplitude"]) > 0.6


def test_the_second_eye_moves_against_the_first_and_blinks_with_it(shhs_night):
    """LOC and ROC: a horizontal eye movement shows with opposite signs, a blink (vertical)
    with the same sign."""
    rec = shhs_night
    loc, roc = rec.signals[rec.role("eog")], rec.signals[rec.role("eog2")]
    fs = rec.sfreq[rec.role("eog")]
    assert rec.sfreq[rec.role("eog2")] == fs and len(roc) == len(loc)

    def correlations(kind):
        events = rec.events[(rec.events["kind"] == kind) & (rec.events["amplitude"] >= 100)]
        spans = [(int(t * fs), int((t + 0.6) * fs)) for t in events["onset"]]
        return np.array([np.corrcoef(loc[a:b], roc[a:b])[0, 1] for a, b in spans])

    rem, blink = correlations("rem"), correlations("blink")
    assert len(rem) > 20 and len(blink) > 20
    assert np.median(rem) < -0.7 and np.median(blink) > 0.7


def test_eye_movements_and_blinks_do_not_pile_up(shhs_night):
    eye = shhs_night.events[shhs_night.events["kind"].isin(["rem", "blink"])]
    assert np.diff(np.sort(eye["onset"].to_numpy())).min() > 0.4


def test_stage_signatures_in_signals(shhs_night):
    rec = shhs_night
    truth = rec.other_scorers["truth"]

    def epoch_sd(role):
        ch = rec.role(role)
        fs = rec.sfreq[ch]
        sos = signal.butter(4, [0.4, min(30, fs / 2 - 1)], "bandpass", fs=fs, output="sos")
        x = signal.sosfiltfilt(sos, rec.signals[ch])
        per = int(EPOCH_S * fs)
        return x[: len(truth) * per].reshape(len(truth), per).std(axis=1)

    eeg, emg = epoch_sd("eeg"), epoch_sd("emg")
    med = {s: np.median(eeg[truth == s]) for s in STAGES}
    assert med["N3"] > 1.5 * med["N2"]
    assert med["N3"] > 1.5 * med["W"]
    # N2 is not far below wake: how close they come is the person's own (their alpha, their
    # muscle), 0.8 to 1.5 of wake among the first eight SHHS-like people
    assert med["N2"] > 0.8 * med["W"]
    assert np.median(emg[truth == "REM"]) < 0.5 * np.median(emg[truth == "W"])


def test_scorer_agreement_in_human_range(isruc_nights):
    vs_truth, between = [], []
    for rec in isruc_nights:
        s1 = rec.stages.astype(str)
        vs_truth.append(cohen_kappa_score(s1, rec.other_scorers["truth"].astype(str)))
        between.append(cohen_kappa_score(s1, rec.other_scorers["scorer2"].astype(str)))
    # DOD's five scorers: pairwise kappa 0.63-0.77; each against the others' majority ~0.72-0.76
    assert 0.60 <= np.mean(between) <= 0.77
    assert 0.62 <= np.mean(vs_truth) <= 0.82


def test_scorer_disagreement_sits_at_neighbouring_stages(isruc_nights):
    pairs = []
    for rec in isruc_nights:
        truth = rec.other_scorers["truth"]
        wrong = rec.stages != truth
        pairs += [frozenset(p) for p in zip(truth[wrong], rec.stages[wrong], strict=True)]
    neighbours = {frozenset(p) for p in (("W", "N1"), ("N1", "N2"), ("N2", "N3"), ("N1", "REM"))}
    assert np.mean([p in neighbours for p in pairs]) > 0.75


@pytest.mark.parametrize("center", sorted(CENTERS))
def test_line_noise_at_center_mains(center):
    rec = simulate_night(center, 1, hours=0.5)
    ch = rec.role("eeg")
    fs = rec.sfreq[ch]
    # 16-s segments: the line sits in one narrow bin, the broadband EEG/EMG spreads out
    freqs, psd = signal.welch(rec.signals[ch], fs, nperseg=int(16 * fs))
    mains = rec.line_freq
    at = psd[np.argmin(np.abs(freqs - mains))]
    flank = np.median(psd[(np.abs(freqs - mains) > 2) & (np.abs(freqs - mains) < 6)])
    assert at > 5 * flank
    other = 60.0 if mains == 50.0 else 50.0
    if other < fs / 2:
        assert psd[np.argmin(np.abs(freqs - other))] < 0.2 * at


def test_bad_arguments_raise_data_errors():
    with pytest.raises(SimulationError, match="unknown simulated center"):
        simulate_night("mass", 0)
    with pytest.raises(DataError, match="hours"):
        simulate_night("dcsm", 0, hours=0.0)
    with pytest.raises(DataError, match=">= 0"):
        simulate_night("dcsm", -1, hours=0.5)
    with pytest.raises(DataError, match="n_epochs"):
        simulate_hypnogram(np.random.default_rng(0), 0)


def test_scoring_without_signals_gives_the_nights_own_labels(isruc_nights):
    for rec in isruc_nights:
        subject = int(rec.subject.rsplit("s", 1)[1])
        hours = len(rec.stages) * 30 / 3600
        truth, scorers = simulate_scoring("isruc", subject, hours=hours, n_scorers=4)
        assert (truth == rec.other_scorers["truth"]).all()
        assert (scorers[0] == rec.stages).all() and (
            scorers[1] == rec.other_scorers["scorer2"]
        ).all()
        assert len(scorers) == 4
    with pytest.raises(SimulationError, match="unknown simulated center"):
        simulate_scoring("mass", 0)
