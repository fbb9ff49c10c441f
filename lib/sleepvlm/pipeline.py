"""Running per-recording work (load, preprocess, epoch) serially or on Dask, and storing the
epochs of a whole cohort on disk one recording at a time.

The executors share one interface (``map``/``imap`` in input order, context manager), so the
same code runs in a notebook, on a laptop's cores (Dask ``LocalCluster``) or on a cluster
(an existing Dask scheduler address). :class:`EpochStore` keeps each dataset's epochs in one
compressed HDF5 file; :func:`preprocess_dataset` streams recordings into it so that at most a
few nights are in memory at once.
"""

from __future__ import annotations

import logging
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from sleepvlm.data.records import ROLES, DataError, Recording
from sleepvlm.signal import (
    EPOCH_SAMPLES,
    EXCLUSION_REASONS,
    MANIFEST_COLUMNS,
    TARGET_SFREQ,
    Epochs,
    QualityWarning,
    epoch_recording,
)

logger = logging.getLogger(__name__)


class SerialExecutor:
    """Runs every task in this process, one after the other (the reference behaviour)."""

    def __enter__(self) -> SerialExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def imap(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        """Results of ``fn(item)``, yielded in input order as they are computed."""
        for item in items:
            yield fn(item)

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        return list(self.imap(fn, items))


class DaskExecutor:
    """Runs tasks on Dask workers: a local cluster of processes, or an existing scheduler.

    ``address`` (e.g. ``"tcp://10.0.0.5:8786"``) connects to a running scheduler; otherwise a
    ``LocalCluster`` with ``n_workers`` single-threaded processes is started (processes, not
    threads: the filters hold the GIL for part of their work). At most ``window`` tasks are in
    flight (default: twice the number of workers) so that results, each a night of epochs,
    do not pile up in memory.
    """

    def __init__(
        self,
        n_workers: int = 2,
        address: str | None = None,
        threads_per_worker: int = 1,
        window: int | None = None,
        **cluster_kwargs: Any,
    ) -> None:
        self.n_workers = n_workers
        self.address = address
        self.threads_per_worker = threads_per_worker
        self.window = window
        self.cluster_kwargs = cluster_kwargs
        self.client = None
        self.cluster = None

    def __enter__(self) -> DaskExecutor:
        from distributed import Client, LocalCluster

        if self.address:
            self.client = Client(self.address)
        else:
            options = {"dashboard_address": None, "silence_logs": logging.WARNING}
            self.cluster = LocalCluster(
                n_workers=self.n_workers,
                threads_per_worker=self.threads_per_worker,
                processes=True,
                **(options | self.cluster_kwargs),
            )
            self.client = Client(self.cluster)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        self.client = self.cluster = None

    def _window(self) -> int:
        if self.window:
            return self.window
        workers = self.client.scheduler_info().get("workers", {})
        return 2 * max(len(workers), 1)

    def imap(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        """Results of ``fn(item)`` in input order, with a bounded number of tasks in flight."""
        if self.client is None:
            raise RuntimeError("DaskExecutor is not started; use it as `with DaskExecutor():`")
        pending_items = iter(items)
        # pure=False: equal inputs are still separate tasks (no silent result sharing).
        in_flight = deque(
            self.client.submit(fn, item, pure=False)
            for item in islice(pending_items, self._window())
        )
        try:
            while in_flight:
                future = in_flight.popleft()
                result = future.result()
                future.release()
                for item in islice(pending_items, 1):
                    in_flight.append(self.client.submit(fn, item, pure=False))
                yield result
        finally:
            for future in in_flight:
                future.cancel()

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        return list(self.imap(fn, items))


EXECUTORS: dict[str, type] = {"serial": SerialExecutor, "dask": DaskExecutor}


def get_executor(name: str, **kwargs: Any) -> SerialExecutor | DaskExecutor:
    """Executor by name: ``"serial"`` or ``"dask"`` (kwargs go to :class:`DaskExecutor`)."""
    try:
        return EXECUTORS[name](**kwargs)
    except KeyError:
        raise ValueError(
            f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}"
        ) from None


#: Epochs per HDF5 chunk: one chunk is ~0.3 MB raw, a few whole epochs per read.
_CHUNK_EPOCHS = 8
_STRING_COLUMNS = ("dataset", "subject", "night", "stage", "source_hash")
_RECORD_COLUMNS = ("key", "dataset", "subject", "night", "source_hash", "first_row", "n_rows")


def _column_dtype(column: str) -> Any:
    if column in (*_STRING_COLUMNS, "key"):
        return h5py.string_dtype("utf-8")
    if column in ("has_eog", "has_emg", "simulated"):
        return np.bool_
    if column == "onset":
        return np.float64
    return np.int64


def _append_column(group: h5py.Group, name: str, values: np.ndarray, start: int) -> None:
    if name not in group:
        group.create_dataset(name, shape=(0,), maxshape=(None,), dtype=_column_dtype(name))
    ds = group[name]
    ds.resize((start + len(values),))
    if len(values):
        # h5py writes variable-length strings from object arrays only (not numpy "<U").
        ds[start:] = np.asarray(values, dtype=object if ds.dtype.kind == "O" else ds.dtype)


def _read_column(ds: h5py.Dataset, stop: int) -> np.ndarray:
    if h5py.check_string_dtype(ds.dtype):
        return np.asarray(ds.asstr()[:stop], dtype=object)
    return ds[:stop]


class EpochStore:
    """Compressed on-disk epochs of one dataset (HDF5: chunked, gzip with byte shuffling).

    Layout: ``data`` (n, 3, 3000) float32 µV; ``manifest/<column>`` one row per epoch;
    ``records/...`` one row per appended recording with its first row, row count and
    exclusion counts. Recordings are keyed by ``source_hash`` (their label when that is
    empty), so appending one twice stores it once. The row count is committed last, so an
    append interrupted half-way leaves rows that the next append overwrites.
    """

    def __init__(self, path: str | Path, dataset: str | None = None) -> None:
        self.path = Path(path)
        self.dataset = dataset
        if self.path.exists():
            with self._open("r") as fh:
                stored = fh.attrs.get("dataset", "")
            if dataset and stored and stored != dataset:
                raise DataError(
                    f"{self.path} holds dataset {stored!r}, not {dataset!r}; "
                    "use one store file per dataset"
                )
            self.dataset = stored or dataset

    def _open(self, mode: str) -> h5py.File:
        try:
            return h5py.File(self.path, mode)
        except OSError as err:
            raise DataError(
                f"{self.path}: cannot open the epoch store ({err}); delete it to rebuild it"
            ) from err

    @staticmethod
    def _committed(fh: h5py.File) -> tuple[int, int]:
        return int(fh.attrs.get("rows", 0)), int(fh.attrs.get("records", 0))

    def _init_file(self, fh: h5py.File) -> None:
        if "data" in fh:
            return
        # Uncompressed: gzip saved a fifth of the size of these noise-like signals but made
        # writing (in the process that collects every night) 25x and reading 2x slower.
        fh.create_dataset(
            "data",
            shape=(0, len(ROLES), EPOCH_SAMPLES),
            maxshape=(None, len(ROLES), EPOCH_SAMPLES),
            chunks=(_CHUNK_EPOCHS, len(ROLES), EPOCH_SAMPLES),
            dtype=np.float32,
        )
        fh.create_group("manifest")
        records = fh.create_group("records")
        records.create_dataset(
            "exclusions",
            shape=(0, len(EXCLUSION_REASONS)),
            maxshape=(None, len(EXCLUSION_REASONS)),
            dtype=np.int64,
        )
        records["exclusions"].attrs["reasons"] = list(EXCLUSION_REASONS)
        fh.attrs.update(
            dataset=self.dataset or "",
            roles=list(ROLES),
            sfreq=TARGET_SFREQ,
            units="uV",
            rows=0,
            records=0,
        )

    def keys(self) -> set[str]:
        """Keys (source hashes) of the recordings already stored."""
        if not self.path.exists():
            return set()
        with self._open("r") as fh:
            _, n_records = self._committed(fh)
            if "records" not in fh or n_records == 0:
                return set()
            return set(_read_column(fh["records/key"], n_records))

    def __contains__(self, key: str) -> bool:
        return key in self.keys()

    def __len__(self) -> int:
        if not self.path.exists():
            return 0
        with self._open("r") as fh:
            return self._committed(fh)[0]

    def append(self, epochs: Epochs) -> bool:
        """Add one recording's epochs; returns False (and stores nothing) if already there."""
        self._check(epochs)
        if epochs.key in self.keys():
            return False
        with self._open("a") as fh:
            self._init_file(fh)
            rows, n_records = self._committed(fh)
            n = len(epochs)
            data = fh["data"]
            data.resize((rows + n, *data.shape[1:]))
            data[rows:] = epochs.data
            for column in MANIFEST_COLUMNS:
                _append_column(fh["manifest"], column, epochs.manifest[column].to_numpy(), rows)
            record = {
                "key": epochs.key,
                "dataset": epochs.dataset,
                "subject": epochs.subject,
                "night": epochs.night,
                "source_hash": epochs.source_hash,
                "first_row": rows,
                "n_rows": n,
            }
            for column in _RECORD_COLUMNS:
                _append_column(fh["records"], column, np.asarray([record[column]]), n_records)
            exclusions = fh["records/exclusions"]
            exclusions.resize((n_records + 1, len(EXCLUSION_REASONS)))
            exclusions[n_records] = [epochs.exclusions.get(r, 0) for r in EXCLUSION_REASONS]
            fh.attrs["rows"] = rows + n
            fh.attrs["records"] = n_records + 1
            if not fh.attrs["dataset"]:
                fh.attrs["dataset"] = epochs.dataset
        self.dataset = self.dataset or epochs.dataset
        return True

    def _check(self, epochs: Epochs) -> None:
        if self.dataset and epochs.dataset != self.dataset:
            raise DataError(
                f"{epochs.label}: belongs to dataset {epochs.dataset!r} but {self.path} stores "
                f"{self.dataset!r}; use one store per dataset"
            )
        expected = (len(epochs.manifest), len(ROLES), EPOCH_SAMPLES)
        if epochs.data.shape != expected or epochs.data.dtype != np.float32:
            raise DataError(
                f"{epochs.label}: epochs are {epochs.data.shape} {epochs.data.dtype}, expected "
                f"{expected} float32; build them with sleepvlm.signal.epoch_recording"
            )

    def manifest(self) -> pd.DataFrame:
        """All stored epochs' manifest rows; the index is the row number for :meth:`read`."""
        if not self.path.exists():
            return pd.DataFrame(columns=list(MANIFEST_COLUMNS))
        with self._open("r") as fh:
            rows, _ = self._committed(fh)
            if rows == 0:
                return pd.DataFrame(columns=list(MANIFEST_COLUMNS))
            return pd.DataFrame(
                {c: _read_column(fh["manifest"][c], rows) for c in MANIFEST_COLUMNS}
            )

    def records(self) -> pd.DataFrame:
        """One row per stored recording, with its rows and exclusion counts per reason."""
        columns = [*_RECORD_COLUMNS, *EXCLUSION_REASONS]
        if not self.path.exists():
            return pd.DataFrame(columns=columns)
        with self._open("r") as fh:
            _, n = self._committed(fh)
            if n == 0:
                return pd.DataFrame(columns=columns)
            table = pd.DataFrame({c: _read_column(fh["records"][c], n) for c in _RECORD_COLUMNS})
            counts = fh["records/exclusions"][:n]
        for i, reason in enumerate(EXCLUSION_REASONS):
            table[reason] = counts[:, i]
        return table

    def exclusions(self) -> dict[str, int]:
        """Excluded epochs per reason, summed over the stored recordings."""
        table = self.records()
        return {r: int(table[r].sum()) if len(table) else 0 for r in EXCLUSION_REASONS}

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Epochs at the given manifest rows, in the order asked (n, 3, 3000) float32."""
        indices = np.asarray(indices, dtype=np.int64)
        n_rows = len(self)
        if indices.size and (indices.min() < 0 or indices.max() >= n_rows):
            raise IndexError(f"{self.path}: rows must lie in [0, {n_rows}), got {indices}")
        if indices.size == 0:
            return np.zeros((0, len(ROLES), EPOCH_SAMPLES), dtype=np.float32)
        # HDF5 point selection needs increasing, unique rows.
        unique, inverse = np.unique(indices, return_inverse=True)
        with self._open("r") as fh:
            block = fh["data"][unique]
        return block[inverse]

    def read_record(self, subject: str, night: str) -> Epochs:
        """All stored epochs of one recording, with its manifest and exclusion counts."""
        table = self.records()
        match = table[(table["subject"] == subject) & (table["night"] == night)]
        if match.empty:
            raise DataError(
                f"{self.path}: no recording {subject}/{night} stored; "
                f"stored: {', '.join(table['subject'] + '/' + table['night']) or 'none'}"
            )
        row = match.iloc[0]
        first, n = int(row["first_row"]), int(row["n_rows"])
        with self._open("r") as fh:
            data = fh["data"][first : first + n]
            manifest = pd.DataFrame(
                {c: _read_column(fh["manifest"][c], first + n)[first:] for c in MANIFEST_COLUMNS}
            )
        return Epochs(
            data=data,
            manifest=manifest,
            exclusions={r: int(row[r]) for r in EXCLUSION_REASONS},
            dataset=row["dataset"],
            subject=subject,
            night=night,
            source_hash=row["source_hash"],
        )


def epoch_source(
    source: Any, load: Callable[[Any], Recording] | None = None, roles: tuple[str, ...] = ROLES
) -> Epochs:
    """Load one recording (a :class:`Recording`, a zero-argument loader, or ``load(source)``)
    and epoch it. Quality warnings are left to the caller, which sees ``exclusions``: a
    warning raised in a Dask worker would never reach the user."""
    if isinstance(source, Recording):
        rec = source
    elif load is not None:
        rec = load(source)
    elif callable(source):
        rec = source()
    else:
        raise DataError(f"cannot load {source!r}: pass load=<loader function> for paths")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", QualityWarning)
        return epoch_recording(rec, roles)


class _EpochTask:
    """Picklable ``epoch_source`` with its loader bound (Dask ships it to the workers)."""

    def __init__(self, load: Callable[[Any], Recording] | None, roles: tuple[str, ...]) -> None:
        self.load = load
        self.roles = roles

    def __call__(self, source: Any) -> Epochs:
        return epoch_source(source, self.load, self.roles)


def preprocess_dataset(
    sources: Iterable[Any],
    store: EpochStore,
    executor: SerialExecutor | DaskExecutor | None = None,
    load: Callable[[Any], Recording] | None = None,
    roles: tuple[str, ...] = ROLES,
) -> pd.DataFrame:
    """Epoch every source on ``executor`` and append the results to ``store`` as they arrive.

    ``sources`` are recordings, zero-argument loaders, or paths/ids passed to ``load`` (which
    must be picklable for Dask: a module-level function or ``functools.partial``). Returns one
    row per source: label, key, kept epochs, whether it was new to the store, exclusions.
    """
    executor = executor or SerialExecutor()
    rows = []
    for epochs in executor.imap(_EpochTask(load, roles), sources):
        appended = store.append(epochs)
        dropped = epochs.exclusions.get("nan", 0) + epochs.exclusions.get("flat", 0)
        if dropped:
            warnings.warn(
                f"{epochs.label}: dropped {epochs.exclusions['nan']} epochs with missing samples "
                f"(NaN) and {epochs.exclusions['flat']} flat epochs",
                QualityWarning,
                stacklevel=2,
            )
        logger.info("%s: %d epochs kept, appended=%s", epochs.label, len(epochs), appended)
        rows.append(
            {"label": epochs.label, "key": epochs.key, "kept": len(epochs), "appended": appended}
            | epochs.exclusions
        )
    return pd.DataFrame(rows, columns=["label", "key", "kept", "appended", *EXCLUSION_REASONS])
