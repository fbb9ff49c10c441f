"""Which channel of each dataset plays which benchmark role (EEG, EOG, chin EMG), and how the
roles are picked from the channels a file actually holds (user aliases first)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from .records import ROLES, SECOND_EYE, ChannelNotFoundError, DataError

#: dataset → role → channel names as spelled in the real files: the benchmark channel first,
#: then other spellings of the same derivation met in the dataset (never another derivation).
#: ``eog2`` is the second eye (ROC), read beside ``eog`` (LOC) where the dataset records both;
#: Sleep-EDF's one horizontal EOG is already a derivation across both eyes.
BENCHMARK_CHANNELS: dict[str, dict[str, list[str]]] = {
    "sleepedf": {
        "eeg": ["EEG Fpz-Cz"],
        "eog": ["EOG horizontal"],
        "emg": ["EMG submental"],
    },
    # DCSM psg.h5 datasets (U-Time / psg-utils layout), 256 Hz.
    "dcsm": {
        "eeg": ["F4-M1"],
        "eog": ["E1-M2"],
        SECOND_EYE: ["E2-M2"],
        "emg": ["CHIN"],
    },
    # SHHS: "EEG" is C4-A1; "EEG(sec)"/"EEG2"/"EEG 2" is C3-A2, a different derivation, so it
    # is not an alias (pass channels={'eeg': ['EEG(sec)']} to use it).
    "shhs": {
        "eeg": ["EEG"],
        "eog": ["EOG(L)"],
        SECOND_EYE: ["EOG(R)"],
        "emg": ["EMG"],
    },
    # ISRUC: subgroups differ in reference naming (A1/A2 earlobes vs M1/M2 mastoids); X1 is chin.
    "isruc": {
        "eeg": ["C4-A1", "C4-M1"],
        "eog": ["LOC-A2", "E1-M2"],
        SECOND_EYE: ["ROC-A1", "E2-M1"],
        "emg": ["X1"],
    },
    # MASS: most nights use a computed-linked-ears reference (CLE), some linked ears (LER).
    "mass": {
        "eeg": ["EEG C4-CLE", "EEG C4-LER"],
        "eog": ["EOG Left Horiz"],
        SECOND_EYE: ["EOG Right Horiz"],
        "emg": ["EMG Chin1", "EMG Chin2", "EMG Chin3"],
    },
}

#: Roles without which a night cannot be scored at all.
REQUIRED_ROLES: tuple[str, ...] = ("eeg",)


def _normalise(name: str) -> str:
    return " ".join(name.split()).casefold()


def _as_list(names: str | Sequence[str] | None) -> list[str]:
    if names is None:
        return []
    return [names] if isinstance(names, str) else list(names)


def pick_roles(
    available: Iterable[str],
    dataset: str,
    channels: Mapping[str, str | Sequence[str]] | None = None,
    source: str = "",
) -> dict[str, str]:
    """Map each role to the first present channel among the user's aliases, then the dataset's.

    Names match ignoring case and repeated blanks. A missing EEG raises; a missing EOG/EMG leaves
    its role out (later rules report it as not evaluable), unless the user asked for it. The
    second eye (``eog2``) is picked only beside a first.
    """
    present = list(available)
    by_key = {_normalise(name): name for name in reversed(present)}
    user = dict(channels or {})
    known = (*ROLES, SECOND_EYE)
    unknown_roles = sorted(set(user) - set(known))
    if unknown_roles:
        raise DataError(f"{source}: unknown channel roles {unknown_roles}; use {list(known)}")
    if dataset not in BENCHMARK_CHANNELS:
        raise DataError(f"{source}: no channel table for dataset {dataset!r}")
    defaults = BENCHMARK_CHANNELS[dataset]
    roles: dict[str, str] = {}
    for role in known:
        if role == SECOND_EYE and "eog" not in roles:
            if role in user:
                raise ChannelNotFoundError(
                    f"{source}: a second eye ({user[role]!r}) was asked for but no first EOG "
                    "channel was found; name the first eye too, e.g. channels={'eog': ['LOC']}"
                )
            continue  # a second eye reads nothing without the first
        wanted = _as_list(user.get(role)) + defaults.get(role, [])
        if role == SECOND_EYE:  # never the channel already read as the first eye
            wanted = [n for n in wanted if _normalise(n) != _normalise(roles["eog"])]
        found = next((by_key[_normalise(n)] for n in wanted if _normalise(n) in by_key), None)
        if found is not None:
            roles[role] = found
        elif role in REQUIRED_ROLES or role in user:
            raise ChannelNotFoundError(
                f"{source}: no {role.upper()} channel among {wanted} (channels present: "
                f"{', '.join(present)}); pass the name used in this file, e.g. "
                f"channels={{'{role}': ['MY-NAME']}}"
            )
    return roles
