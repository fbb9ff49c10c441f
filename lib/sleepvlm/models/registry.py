"""The model registry: which models the benchmark runs, through which backend, with which
decoding settings and prices. Loaded from ``registry.yaml`` beside this module (or any file of
the same schema) and validated entry by entry. A lab's own models go in a file of its own,
named by ``$SLEEPVLM_REGISTRY``: its entries are read over the packaged ones (a name in both
takes the lab's entry), so nothing inside the installed package is edited."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import RegistryError
from .weights import WeightsError, WheelWeights

REGISTRY_PATH = Path(__file__).with_name("registry.yaml")
#: Environment variable naming a registry file of the user's own models (see the docstring).
USER_REGISTRY_ENV = "SLEEPVLM_REGISTRY"
#: What a packaged entry's ``registry`` says (a user entry names its file).
PACKAGED = "packaged"
BACKENDS = ("openai", "openai_compatible", "transformers", "local")
MODALITIES = ("image", "text", "sequence")
ROLES = ("vlm", "text-llm", "ts-llm", "floor", "trained")
DEFAULT_DECODING = {"temperature": 0}
_FIELDS = {
    "backend",
    "model_id",
    "modalities",
    "decoding",
    "base_url",
    "api_key_env",
    "price",
    "role",
    "image",
    "concurrency",
    "weights",
    "context",
}
#: Image options a model may fix (those it was trained on); the rest keep the benchmark's.
IMAGE_FIELDS = ("width", "height", "context", "chin_reference_uv")


@dataclass(frozen=True)
class ModelSpec:
    """One registered model. ``price`` is USD per million tokens (``input``, ``output``)."""

    name: str
    backend: str
    model_id: str
    modalities: tuple[str, ...] = ("text",)
    decoding: dict = field(default_factory=lambda: dict(DEFAULT_DECODING))
    base_url: str | None = None
    api_key_env: str | None = None
    price: dict | None = None
    role: str = "vlm"
    image: dict | None = None  # image options the model needs (see IMAGE_FIELDS)
    # Requests in flight by default; a local model that batches them wants many.
    concurrency: int | None = None
    # A weights file fetched into the cache (see sleepvlm.models.weights): a real pretrained
    # model run here, loaded from that file rather than from ``model_id``.
    weights: dict | None = None
    # Tokens the model attends to (prompt and answer together), as its config says: lets a
    # chapter tell which inputs fit before loading it (the loaded model's config decides).
    context: int | None = None
    # Where the entry came from: PACKAGED, the user registry file, or "parameters" for a model
    # described by a chapter's parameters (base_url, model_id); results records carry it.
    registry: str = PACKAGED

    def __post_init__(self):
        object.__setattr__(self, "modalities", tuple(self.modalities))
        object.__setattr__(self, "decoding", {**DEFAULT_DECODING, **(self.decoding or {})})
        _validate(self)

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
        """USD for one call, or None when the price or a token count is unknown."""
        if self.price is None or prompt_tokens is None or completion_tokens is None:
            return None
        return (
            prompt_tokens * self.price["input"] + completion_tokens * self.price["output"]
        ) / 1e6

    @property
    def wheel_weights(self) -> WheelWeights | None:
        return (
            None
            if self.weights is None
            else WheelWeights.from_entry(self.weights, f"model {self.name!r}")
        )

    def replace(self, **changes) -> ModelSpec:
        return dataclasses.replace(self, **changes)


def _validate(spec: ModelSpec) -> None:
    where = f"model {spec.name!r}"
    if spec.backend not in BACKENDS:
        raise RegistryError(f"{where}: backend {spec.backend!r} is not one of {BACKENDS}")
    if not spec.model_id or not isinstance(spec.model_id, str):
        raise RegistryError(f"{where}: model_id must be a non-empty string")
    unknown = set(spec.modalities) - set(MODALITIES)
    if unknown or not spec.modalities:
        raise RegistryError(f"{where}: modalities must be among {MODALITIES}, got {unknown}")
    if spec.role not in ROLES:
        raise RegistryError(f"{where}: role {spec.role!r} is not one of {ROLES}")
    temperature = spec.decoding.get("temperature")
    if not isinstance(temperature, int | float) or temperature < 0:
        raise RegistryError(f"{where}: decoding temperature must be a number >= 0")
    if spec.backend == "openai_compatible" and not spec.base_url:
        raise RegistryError(f"{where}: an openai_compatible model needs base_url")
    if spec.api_key_env is not None and not spec.api_key_env.isidentifier():
        raise RegistryError(
            f"{where}: api_key_env must name an environment variable, not hold a key"
        )
    if spec.image is not None and (
        not isinstance(spec.image, dict)
        or set(spec.image) - set(IMAGE_FIELDS)
        or any(isinstance(v, bool) or not isinstance(v, int | float) for v in spec.image.values())
    ):
        raise RegistryError(f"{where}: image takes numbers for {', '.join(IMAGE_FIELDS)} only")
    if spec.concurrency is not None and (
        not isinstance(spec.concurrency, int) or spec.concurrency < 1
    ):
        raise RegistryError(f"{where}: concurrency must be a positive integer")
    if spec.context is not None and (
        isinstance(spec.context, bool) or not isinstance(spec.context, int) or spec.context < 1
    ):
        raise RegistryError(f"{where}: context must be a positive number of tokens")
    if spec.weights is not None:
        if spec.backend != "transformers":
            raise RegistryError(f"{where}: weights are loaded by the transformers backend only")
        try:
            WheelWeights.from_entry(spec.weights, where)
        except WeightsError as err:
            raise RegistryError(str(err)) from err
    if spec.price is not None:
        if set(spec.price) != {"input", "output"} or any(
            not isinstance(v, int | float) or v < 0 for v in spec.price.values()
        ):
            raise RegistryError(f"{where}: price needs non-negative 'input' and 'output' (USD/M)")


def load_registry(path: str | Path | None = None) -> dict[str, ModelSpec]:
    """All models of a registry file, by name; by default the packaged registry with the
    user's (``$SLEEPVLM_REGISTRY``) read over it."""
    if path is None:
        user = os.environ.get(USER_REGISTRY_ENV, "").strip()
        packaged = _read_registry(REGISTRY_PATH)
        return {**packaged, **_read_registry(Path(user))} if user else packaged
    return _read_registry(Path(path))


def _read_registry(path: Path) -> dict[str, ModelSpec]:
    source = PACKAGED if path == REGISTRY_PATH else str(path)
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise RegistryError(f"cannot read model registry {path}: {err}") from err
    entries = document.get("models") if isinstance(document, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise RegistryError(f"{path}: expected a mapping 'models:' of name -> entry")
    specs = {}
    for name, entry in entries.items():
        if not isinstance(entry, dict):
            raise RegistryError(f"{path}: entry {name!r} must be a mapping")
        unknown = set(entry) - _FIELDS
        if unknown:
            raise RegistryError(
                f"{path}: entry {name!r} has unknown fields {sorted(unknown)}; "
                f"allowed: {sorted(_FIELDS)}"
            )
        try:
            specs[name] = ModelSpec(name=str(name), **entry, registry=source)
        except TypeError as err:
            raise RegistryError(f"{path}: entry {name!r}: {err}") from err
    return specs


def get_model(name: str, registry: dict[str, ModelSpec] | None = None, **changes) -> ModelSpec:
    """The registered model ``name``, with fields replaced by ``changes`` (e.g. ``base_url``)."""
    registry = load_registry() if registry is None else registry
    if name not in registry:
        raise RegistryError(f"unknown model {name!r}; registered: {', '.join(sorted(registry))}")
    spec = registry[name]
    return spec.replace(**changes) if changes else spec
