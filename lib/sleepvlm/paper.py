"""The published numbers of the seed papers (SleepVLM-Bench and SleepVLM), kept in one place.

They are shown only as the paper's, beside what this project measures; nothing here is ever
used as a result of ours."""

from __future__ import annotations

#: SleepVLM-Bench, dataset table: class-balanced test epochs per dataset (W, N1, N2, N3, REM).
BALANCED_COUNTS: dict[str, dict[str, int]] = {
    "dcsm": {"W": 453, "N1": 585, "N2": 606, "N3": 486, "REM": 572},
    "shhs": {"W": 327, "N1": 494, "N2": 605, "N3": 472, "REM": 492},
    "isruc": {"W": 460, "N1": 443, "N2": 499, "N3": 447, "REM": 400},
}
