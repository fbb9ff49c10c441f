"""The raw-response store: an append-only JSONL file, one fsync'ed line per answered request,
keyed by (model, prompt hash, input hash, decoding). A killed run loses at most the line being
written (a truncated last line is dropped on open) and a rerun asks only for what is missing."""

from __future__ import annotations

import json
import os
from pathlib import Path

from sleepvlm.cache import content_hash

from .errors import ModelError
from .secrets import redact


def response_key(model: str, prompt_hash: str, input_hash: str, decoding: dict) -> str:
    """Key of one stored response; ``model`` names backend and model id (see the engine)."""
    return content_hash(model, prompt_hash, input_hash, decoding, length=32)


class ResponseStore:
    """Responses by key, loaded from ``path`` and appended to it as they arrive."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._records: dict[str, dict] = {}
        self.dropped_tail = self._load()

    def _load(self) -> bool:
        """Read every complete line; cut a truncated last line. True when one was cut."""
        if not self.path.exists():
            return False
        data = self.path.read_bytes()
        complete = data.rfind(b"\n") + 1
        for number, line in enumerate(data[:complete].splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                self._records[record["key"]] = record
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ModelError(
                    f"{self.path} line {number} is not a stored response ({err}); the store is "
                    "append-only, so something else wrote to it: move the file away to start over"
                ) from err
        if complete < len(data):
            with self.path.open("r+b") as fh:
                fh.truncate(complete)
            return True
        return False

    def __contains__(self, key: str) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: str) -> dict | None:
        return self._records.get(key)

    def records(self) -> list[dict]:
        return list(self._records.values())

    def append(self, record: dict, sync: bool = True) -> None:
        """Write ``record`` (which has a ``key``) as one line, secrets redacted. The line is
        flushed to the operating system at once (a killed process cannot lose it) and, with
        ``sync``, to the disk; the engine instead calls :meth:`sync` off its event loop."""
        line = redact(json.dumps(record, sort_keys=True, ensure_ascii=False)) + "\n"
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line)
        self._records[record["key"]] = json.loads(line)
        if sync:
            self.sync()

    def sync(self) -> None:
        """fsync the file: every line written so far survives a power cut."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
