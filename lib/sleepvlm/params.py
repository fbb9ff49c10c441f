"""Chapter parameters as readers write them.

Papermill's ``-p NAME VALUE`` types only numbers, ``True``/``False`` and ``None``: any other
value, ``'["dcsm"]'`` included, reaches the chapter as text. ``-y``/``-f`` (and
``sleepvlm book -p``) pass YAML, so the chapter gets a real list or dict. Every chapter passes
each list or dict parameter through :func:`as_list` or :func:`as_dict` right after its
parameters cell, so that every written form means the same thing in every chapter, and a form
that means nothing stops the chapter at once with the forms that work.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import yaml

#: Characters that never belong to a name: they are left over from a list or dict written wrong.
NOT_IN_NAMES = "[]{}\"'"

#: The paper's three centers, in its order (easiest to hardest for its supervised models): the
#: simulated cohort's centers and the default datasets of every chapter.
PAPER_CENTERS: tuple[str, ...] = ("dcsm", "shhs", "isruc")
#: Share of the paper's class-balanced per-stage counts every chapter draws by default: 1, the
#: paper's counts exactly (a smaller share is a reader's choice, ``-p count_scale 0.5``).
BOOK_COUNT_SCALE = 1.0
#: How a model trained on one center is tested: on that center's held-out subjects, or on a
#: center it never saw (the paper's external cohort). Every table and sentence uses these words.
WITHIN = "within center"
EXTERNAL = "external"
#: SleepVLM-mini's default optimizer steps of phase 1 (waveform description) and phase 2 (stage,
#: rules, evidence): the defaults of its config and of chapter 11's parameters. Twice the
#: 800/1200 of before: with each of two training seeds, whole-night κ rose on every center (by
#: 0.05 to 0.21, 2 test nights each), for twice the training time, which the book's budget holds.
MINI_PERCEPTION_STEPS = 1600
MINI_GROUNDING_STEPS = 2400
#: Weights SleepVLM-mini keeps along its grounding phase for chapter 11's training curve: the
#: default of train_mini, so that every chapter that trains it (07 and 11) asks for one model.
MINI_SNAPSHOTS = 7


def evaluation_setting(trained_on: str, tested_on: str) -> str:
    """:data:`WITHIN` when a model is tested on the center it was trained on, else
    :data:`EXTERNAL`."""
    return WITHIN if trained_on == tested_on else EXTERNAL


class ParameterError(ValueError):
    """A chapter parameter in a form the chapter cannot read."""


def list_forms(name: str) -> str:
    """The ways of writing list parameter ``name`` on the command line, for error messages."""
    return (
        f"-p {name} NAME (one name), -p {name} NAME1,NAME2 (names separated by commas) or "
        f'-y "{name}: [NAME1, NAME2]" (a YAML list)'
    )


def dict_forms(name: str) -> str:
    """The ways of writing dict parameter ``name`` on the command line, for error messages."""
    return f"-y \"{name}: {{NAME: VALUE}}\" or -p {name} '{{NAME: VALUE}}' (a YAML mapping)"


def _parse_yaml(text: str, name: str, forms: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        first_line = str(err).splitlines()[0]
        raise ParameterError(
            f"{name}: {text!r} is not valid YAML ({first_line}); write {forms}"
        ) from err


def _items_of_text(text: str, name: str, forms: str):
    """What a list parameter written as text holds (papermill's ``-p`` passes text)."""
    if not text:
        return []
    if text[0] in "[{":
        return _parse_yaml(text, name, forms)
    return text.split(",")


def _checked_name(item: object, name: str, forms: str) -> str:
    if not isinstance(item, str):
        kind = "a nested list" if isinstance(item, list | tuple) else type(item).__name__
        raise ParameterError(f"{name}: {item!r} ({kind}) is not a name; write {forms}")
    stripped = item.strip()
    if not stripped:
        raise ParameterError(f"{name}: an empty name (a comma too many?); write {forms}")
    if any(c in NOT_IN_NAMES for c in stripped):
        raise ParameterError(f"{name}: {stripped!r} is not a name; write {forms}")
    return stripped


def as_list(value: object, name: str) -> list[str]:
    """The names that list parameter ``name`` holds.

    Accepts a list (or tuple) of names, a YAML/JSON list written as text (``'["dcsm"]'``,
    ``'[dcsm, shhs]'``), names separated by commas (``'dcsm,shhs'``) or a single name
    (``'dcsm'``); empty text is the empty list. Anything else (a number, a dict, a nested list,
    an empty name) raises :class:`ParameterError` naming ``name`` and the forms that work.
    """
    forms = list_forms(name)
    items = _items_of_text(value.strip(), name, forms) if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ParameterError(
            f"{name} must be a list of names, not {items!r} ({type(items).__name__}); write {forms}"
        )
    return [_checked_name(item, name, forms) for item in items]


def as_dict(value: object, name: str, keys: Sequence[str] | None = None) -> dict[str, str]:
    """The name-to-text mapping (e.g. dataset to folder) that dict parameter ``name`` holds.

    Accepts a dict or a YAML/JSON mapping written as text (``'{dcsm: /data/dcsm}'``); empty text
    is the empty dict. Anything else (a list, a number, a key or value that is not text) raises
    :class:`ParameterError` naming ``name`` and the forms that work; so does a key outside
    ``keys`` when given (a misspelt dataset would otherwise be ignored without a word).
    """
    forms = dict_forms(name)
    mapping = value
    if isinstance(value, str):
        mapping = _parse_yaml(value, name, forms) if value.strip() else {}
    if not isinstance(mapping, Mapping):
        raise ParameterError(
            f"{name} must be a mapping, not {mapping!r} ({type(mapping).__name__}); write {forms}"
        )
    checked = {}
    for key, item in mapping.items():
        if not isinstance(item, str) or not item.strip():
            raise ParameterError(f"{name}: the value of {key!r} must be text; write {forms}")
        checked[_checked_name(key, name, forms)] = item.strip()
    unknown = [k for k in checked if keys is not None and k not in keys]
    if unknown:
        raise ParameterError(
            f"{name}: {', '.join(map(repr, unknown))} not among {', '.join(keys) or 'no names'}; "
            f"each key must be one of them (a typo, or a dataset missing from datasets?)"
        )
    return checked


def require_one_dataset(datasets: list[str], data_dir: str) -> None:
    """A ``data_dir`` is the folder of one real dataset: ``datasets`` must name exactly it."""
    if data_dir and len(datasets) != 1:
        raise ParameterError(
            f"data_dir {data_dir!r} is the folder of one dataset, but datasets names "
            f"{len(datasets)} ({', '.join(datasets) or 'none'}); name the one it holds, "
            "e.g. -p datasets dcsm"
        )


def datasets_to_run(datasets: object, dataset: str, data_dir: str) -> list[str]:
    """The datasets a chapter runs on: ``dataset`` alone when given (the one a ``data_dir``
    holds), else list parameter ``datasets``; a ``data_dir`` needs exactly one of them."""
    chosen = [dataset.strip()] if dataset and dataset.strip() else as_list(datasets, "datasets")
    require_one_dataset(chosen, data_dir)
    return chosen
