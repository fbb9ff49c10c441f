"""SleepVLM-mini: a small generative vision-language model (the Qwen2-VL architecture of
transformers, built from a config, about a million parameters) that reads a fixed-scale epoch
image with its neighbours and writes the stage, the AASM rule IDs and the evidence.

Trained from scratch on this machine in the two phases of SleepVLM: *perception* (describe the
waveforms of the scored epoch: per-segment dominant EEG band and amplitudes, and the events in
it) then *grounding* (answer with stage, rules and evidence as
:func:`sleepvlm.explain.annotations.answer_text` writes them). The tokenizer is a word-level
vocabulary trained with ``tokenizers`` on the target texts. A trained model is a Hugging Face
folder (``save_pretrained`` of model, tokenizer and image processor, plus ``sleepvlm_mini.json``
with its settings and training log); the same code fine-tunes a pretrained Qwen2-VL-family
folder with LoRA (peft) when one is given.

Torch and transformers are imported when a model is built or loaded, not on import.
"""

from __future__ import annotations

import io
import json
import math
import random
import shutil
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from queue import Empty, Queue
from typing import TYPE_CHECKING

import numpy as np

from sleepvlm.data.records import EPOCH_S, EVENT_KINDS, STAGES, DataError
from sleepvlm.models.backends import quiet_loading
from sleepvlm.params import MINI_GROUNDING_STEPS, MINI_PERCEPTION_STEPS
from sleepvlm.render import ImageOptions, lane_problems, layout
from sleepvlm.rules.table import BANDS, RULES
from sleepvlm.signal import TARGET_SFREQ

if TYPE_CHECKING:  # contrast and guidance import this module
    from sleepvlm.explain.contrast import Contrast
    from sleepvlm.explain.guidance import ProbeGuidance

PHASES: tuple[str, ...] = ("perception", "grounding")
#: The instruction of each phase: the whole user text the model is trained and served with.
INSTRUCTIONS: dict[str, str] = {
    "perception": "Describe the waveforms of the center epoch.",
    "grounding": "Score the center epoch by the AASM rules: stage, rules, evidence.",
}
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
PAD, UNK = "<pad>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (
    PAD,
    UNK,
    IM_START,
    IM_END,
    VISION_START,
    VISION_END,
    IMAGE_PAD,
    VIDEO_PAD,
)
#: Segments of the scored epoch described in the perception phase (seconds each).
SEGMENT_S = 5
#: Peak-to-peak amplitude bounds (µV) of the levels 0-4 written in the perception phase.
AMPLITUDE_LEVELS: dict[str, tuple[float, ...]] = {
    "eeg": (25.0, 50.0, 100.0, 150.0),
    "eog": (25.0, 75.0, 150.0, 300.0),
    "emg": (5.0, 10.0, 20.0, 40.0),
}
SETTINGS_FILE = "sleepvlm_mini.json"
#: Folder of a saved model that holds the weights of its training snapshots (snapshot_path).
SNAPSHOTS = "snapshots"
#: The snapshot of the weights as the perception phase left them (0 grounding steps).
PERCEPTION_SNAPSHOT = 0
IGNORE = -100  # label of tokens the loss skips (prompt, image, padding)
EVIDENCE = "Evidence:"  # the token that opens an answer's evidence


class MiniError(DataError):
    """SleepVLM-mini cannot be built, trained or loaded as asked."""


@dataclass(frozen=True)
class MiniConfig:
    """Architecture, input and training settings of SleepVLM-mini."""

    image_width: int = 896  # the scored epoch and one neighbour each side, ~10 px/s each
    image_height: int = 224
    # Neighbouring epochs drawn on each side. With 0 the scored epoch is drawn three times as
    # wide (~27 px/s): the lever `no-context` (its records in chapter 11's lever table) moved
    # the precision of the answers as written no further than a second seed does. Its patch
    # states are columns of about 1 s rather than 3.2 s; after the answer-time levers (the
    # lever table's checked columns) it kept more evidence at the precision goal, but by no
    # more than a second seed of this default moves that, so the default keeps the neighbours
    # the AASM's rules read.
    context: int = 1
    # The chin EMG drawn against its night (its median RMS at this many µV): trained on one
    # center's absolute chin level, the model called other centers' sleep with a louder chin
    # (another amplifier, filter, noise floor) wake.
    chin_reference_uv: float = 2.0
    vision_depth: int = 2  # 4 (the lever `deeper-vision`): precision within the seed noise
    vision_dim: int = 96
    text_dim: int = 128
    text_layers: int = 2
    heads: int = 4
    # Pixels per side of a vision patch. Qwen2-VL's own is 14; on these images 28 reached the
    # same kappa as 14 and 16 in a fixed training time with a quarter of the patches, so it
    # trains and answers about three times faster. 14-px patches merged 4 x 4 (the lever
    # `finer-patches`: as many image tokens, patch states half as wide, twice the training
    # time) kept no more evidence at the precision goal after the answer-time levers than a
    # second seed of this default moves it.
    patch_size: int = 28
    # Frames per patch: Qwen2-VL repeats a still image into 2; one halves the patch embedding.
    temporal_patch_size: int = 1
    # Patches per side the vision tower merges into one image token (Qwen2-VL's own 2): one
    # token then spans about 6 s of the epoch (token_seconds); 1 gives four times the tokens.
    spatial_merge: int = 2
    # Resolution (s) of the event times the answers cite: each event's span rounded outwards
    # to multiples of it. One image token spans ~6 s of the epoch; cited to the second, the
    # model wrote one template of times per stage (precision 0.29 on DCSM's test nights);
    # at 5 s, 0.37 (issue 19's lever runs, one seed each).
    time_step_s: int = 5
    # Perception targets name each 5-s segment's own events (True) rather than listing the
    # events with their times after the segments (False): with it and 800 perception steps,
    # precision 0.45 and answers citing an absent event 69 % (from 86 %), kappa about the same.
    segment_events: bool = True
    # Loss weight of the grounding targets' evidence tokens (after "Evidence:"), where the
    # answers go wrong (mostly the time of an event); 1 is plain next-token loss.
    evidence_weight: float = 1.0
    # Weight of an auxiliary loss on the image tokens (both phases): a linear head on each
    # token must say which event kinds lie in its stretch of the scored epoch
    # (presence_targets), so that the vision tower learns where events are, not only that
    # they are; 0 trains on the answers' text alone. At 1, chapter 11's linear probe found
    # events' columns better (within-epoch AUC on DCSM: spindle 0.71, K complex 0.83, twitch
    # 0.94, from 0.70, 0.79 and 0.68), but the answers' precision moved no further than a
    # second seed does (the lever `presence-loss`).
    presence_weight: float = 0.0
    # Add a learned embedding of each image-token column to its tokens (add_column_embedding).
    # Qwen2-VL places image tokens by rotary positions, which weight attention but put nothing
    # of *where* into what a token hands on; with it, each token carries which stretch of the
    # image it shows, so an answer can read an event's time from the token that shows it.
    # The lever `column-embedding` moved precision no further than a second seed does; with
    # presence_weight 1 as well (one run, not a lever), precision 0.41 / 0.41 / 0.33 and kappa
    # lower (0.69 / 0.72 / 0.48). The answers do not read times from the tokens; read at answer
    # time by a probe, they do (sleepvlm.explain.guidance).
    column_embedding: bool = False
    # Share of each grounding batch asked the perception instruction (and trained on its
    # target), so that grounding does not overwrite what perception taught; 0: none.
    perception_mix: float = 0.0
    # Share of each grounding batch shown a blank image with its epoch's answer, as
    # classifier-free guidance trains an unconditional model beside the conditional one: the
    # model then knows what it writes from no image, which contrastive decoding against the blank
    # image (sleepvlm.explain.contrast) takes away; 0: none (a blank image is one it never saw).
    # Measured at 0.125 (200 held-out epochs per center, one seed): greedy precision 0.41 / 0.42
    # / 0.32, as without it; contrasted from the evidence on (blank, weight 4), 0.42 / 0.42 /
    # 0.35, less than the default model gained (0.46 / 0.57 / 0.41): the contrast pulls less
    # from a blank image the model has learnt to answer.
    unconditional_share: float = 0.0
    perception_steps: int = MINI_PERCEPTION_STEPS
    grounding_steps: int = MINI_GROUNDING_STEPS
    batch_size: int = 8
    learning_rate: float = 1e-3
    warmup_steps: int = 30
    max_new_tokens: int = 64
    seed: int = 0

    def image_options(self) -> ImageOptions:
        return ImageOptions(
            width=self.image_width,
            height=self.image_height,
            context=self.context,
            chin_reference_uv=self.chin_reference_uv,
        )


def token_seconds(config: MiniConfig) -> float:
    """Seconds of the scored epoch one image token spans: ``spatial_merge`` patches of
    ``patch_size`` px, on the layout's 30-s epoch slot. A model that places an event only by
    the token it sees it in is off by up to this much."""
    slot_px = layout(config.image_options()).slot_width
    return config.spatial_merge * config.patch_size * EPOCH_S / slot_px


def column_spans(config: MiniConfig) -> list[tuple[float, float] | None]:
    """Per column of image tokens (``spatial_merge`` patches wide), the stretch of the scored
    epoch it shows (s from its start); None for a column of which less than half lies in the
    scored epoch (its events are the neighbours', which no target names)."""
    geometry = layout(config.image_options())
    start, stop = geometry.center_columns
    width = config.spatial_merge * config.patch_size
    spans = []
    for left in range(0, config.image_width - width + 1, width):
        inside = min(left + width, stop) - max(left, start)
        if inside < width / 2:
            spans.append(None)
            continue
        seconds = [(x - start) * EPOCH_S / geometry.slot_width for x in (left, left + width)]
        spans.append((max(0.0, seconds[0]), min(EPOCH_S, seconds[1])))
    return spans


def presence_targets(events, config: MiniConfig) -> np.ndarray:
    """(columns, event kinds): 1 where an event of that kind overlaps the column's stretch of
    the scored epoch (:func:`column_spans`), 0 where none does, NaN for a column outside it;
    from :class:`~sleepvlm.explain.annotations.Evidence`-like events."""
    spans = column_spans(config)
    targets = np.full((len(spans), len(EVENT_KINDS)), np.nan)
    for col, span in enumerate(spans):
        if span is None:
            continue
        targets[col] = 0.0
        for event in events:
            if event.start_s < span[1] and max(event.end_s, event.start_s + 1e-3) > span[0]:
                targets[col, EVENT_KINDS.index(event.kind)] = 1.0
    return targets


@dataclass
class Example:
    """One training or test epoch: its image (PNG), the target text of each phase and the
    event kinds in each image-token column (:func:`presence_targets`)."""

    image: bytes
    targets: dict[str, str]
    key: tuple = ()
    presence: np.ndarray | None = None


@dataclass
class TrainingLog:
    """Loss per step and wall time per phase, and the trained weights (:func:`trainable_weights`)
    after each step count asked for by ``snapshot_at`` of :func:`train_phase`."""

    loss: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PHASES})
    seconds: dict[str, float] = field(default_factory=dict)
    snapshots: dict[int, dict] = field(default_factory=dict)


# --- perception targets ------------------------------------------------------------------------


def _level(value: float, bounds: tuple[float, ...]) -> int:
    return int(np.searchsorted(bounds, value))


def dominant_band(x: np.ndarray, sfreq: float = TARGET_SFREQ) -> str:
    """The AASM band that stands out most in ``x``: mean power per Hz times the band's center
    frequency, which flattens the 1/f fall of EEG power (without it delta always wins)."""
    spectrum = np.abs(np.fft.rfft(x - x.mean())) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / sfreq)
    weighted = {
        band: spectrum[(freqs >= lo) & (freqs < hi)].mean() * (lo + hi) / 2
        for band, (lo, hi) in BANDS.items()
    }
    return max(weighted, key=weighted.get)


def waveform_description(
    epoch: np.ndarray,
    events: Sequence[str] = (),
    segment_events: Sequence[Sequence[str]] | None = None,
) -> str:
    """The perception target of one (3, 3000) epoch at 100 Hz: per 5-s segment the dominant
    EEG band and the amplitude level (0-4) of EEG, EOG and EMG, then the events given
    (already written as text, e.g. ``"spindle EEG 12-13"``). With ``segment_events`` (one
    list of words per segment, :func:`segment_event_words`) each segment names its own events
    instead, so that the model learns *where* in the image each event lies."""
    step = int(SEGMENT_S * TARGET_SFREQ)
    words = []
    for k, start in enumerate(range(0, epoch.shape[1], step)):
        seg = epoch[:, start : start + step]
        words.append(f"t{start // int(TARGET_SFREQ)}")
        words.append(dominant_band(seg[0]))
        for i, role in enumerate(("eeg", "eog", "emg")):
            amplitude = np.ptp(seg[i]) if role != "emg" else 2 * seg[i].std()
            words.append(f"{role}{_level(float(amplitude), AMPLITUDE_LEVELS[role])}")
        if segment_events is not None:
            words.extend(segment_events[k])
    if segment_events is None:
        words.append("events:")
        words.extend(f"{e} ;" for e in events) if events else words.append("none")
    return " ".join(words)


def segment_event_words(events) -> list[list[str]]:
    """Per 5-s segment of the epoch, ``kind@ROLE`` of each event that overlaps it (once per
    kind and channel), from :class:`~sleepvlm.explain.annotations.Evidence`-like events."""
    segments = [[] for _ in range(int(EPOCH_S // SEGMENT_S))]
    for event in events:
        first = max(0, int(event.start_s // SEGMENT_S))
        last = min(len(segments) - 1, int(max(event.end_s - 1e-9, event.start_s) // SEGMENT_S))
        for k in range(first, last + 1):
            word = f"{event.kind}@{event.role.upper()}"
            if word not in segments[k]:
                segments[k].append(word)
    return segments


# --- tokenizer, image processor, model ---------------------------------------------------------


def vocabulary_texts() -> list[str]:
    """Words every SleepVLM-mini vocabulary holds, whatever its training texts: stages, rule
    IDs, whole seconds, the instructions."""
    return [
        " ".join(STAGES),
        " ".join(RULES),
        " ".join(str(s) for s in range(31)),
        *INSTRUCTIONS.values(),
        "user assistant",
    ]


def train_tokenizer(texts: Sequence[str]):
    """A word-level tokenizer (whitespace-split words; special tokens of Qwen2-VL's chat layout)
    trained on ``texts`` and :func:`vocabulary_texts`."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = tokenizers.Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words by spaces
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), min_frequency=1)
    tokenizer.train_from_iterator([*vocabulary_texts(), *texts], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token=UNK,
        pad_token=PAD,
        eos_token=IM_END,
        additional_special_tokens=list(SPECIAL_TOKENS[2:]),
    )


def image_processor(config: MiniConfig):
    """Qwen2-VL's image processor fixed to the training image size (no resizing)."""
    # The PIL implementation: the default one needs torchvision, which does not import beside
    # this torch build.
    from transformers import Qwen2VLImageProcessorPil

    pixels = config.image_width * config.image_height
    return Qwen2VLImageProcessorPil(
        min_pixels=pixels,
        max_pixels=pixels,
        patch_size=config.patch_size,
        temporal_patch_size=config.temporal_patch_size,
        merge_size=config.spatial_merge,
    )


def build_model(tokenizer, config: MiniConfig):
    """A randomly initialised Qwen2-VL of ``config``'s size with ``tokenizer``'s vocabulary."""
    import transformers

    ids = tokenizer.convert_tokens_to_ids
    head_dim = config.text_dim // config.heads
    # M-RoPE splits each head's rotary half into temporal, height and width sections.
    half = head_dim // 2
    section = [half - 2 * (half // 3), half // 3, half // 3]
    model_config = transformers.Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": config.text_dim,
            "intermediate_size": 2 * config.text_dim,
            "num_hidden_layers": config.text_layers,
            "num_attention_heads": config.heads,
            "num_key_value_heads": config.heads,
            "max_position_embeddings": 4096,
            "rope_scaling": {"type": "mrope", "mrope_section": section},
            "bos_token_id": ids(IM_START),
            "eos_token_id": ids(IM_END),
            "pad_token_id": ids(PAD),
        },
        vision_config={
            "depth": config.vision_depth,
            "embed_dim": config.vision_dim,
            "hidden_size": config.text_dim,
            "num_heads": config.heads,
            "mlp_ratio": 2,
            "patch_size": config.patch_size,
            "spatial_merge_size": config.spatial_merge,
            "temporal_patch_size": config.temporal_patch_size,
        },
        image_token_id=ids(IMAGE_PAD),
        video_token_id=ids(VIDEO_PAD),
        vision_start_token_id=ids(VISION_START),
        vision_end_token_id=ids(VISION_END),
        bos_token_id=ids(IM_START),
        eos_token_id=ids(IM_END),
        pad_token_id=ids(PAD),
    )
    transformers.set_seed(config.seed)
    model = transformers.Qwen2VLForConditionalGeneration(model_config)
    if config.column_embedding:
        add_column_embedding(model, config)
    return model


def token_grid(config: MiniConfig) -> tuple[int, int]:
    """Rows and columns of the image tokens of one image (after the vision tower's merge)."""
    merged = config.spatial_merge * config.patch_size
    return config.image_height // merged, config.image_width // merged


def vision_tower(model):
    """The vision tower of a Qwen2-VL-family model (wrapped in LoRA or not)."""
    return next(m for name, m in model.named_modules() if name.endswith("visual"))


def add_column_embedding(model, config: MiniConfig) -> None:
    """Give ``model``'s vision tower a learned vector per image-token column
    (``column_embedding``, saved with its weights) and add it to each token it hands the
    language model (the tokens come row by row, :func:`token_grid`)."""
    import torch

    tower = vision_tower(model)
    columns = token_grid(config)[1]
    width = model.get_input_embeddings().embedding_dim
    tower.column_embedding = torch.nn.Parameter(0.02 * torch.randn(columns, width))
    tower.register_forward_hook(_add_columns)


def _add_columns(tower, args, output):
    tokens, columns = output.pooler_output, tower.column_embedding
    output.pooler_output = (tokens.view(-1, *columns.shape) + columns).view_as(tokens)
    return output


# --- batches -----------------------------------------------------------------------------------


def blank_like(png: bytes) -> bytes:
    """A white PNG of the size of image ``png``."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        size = image.size
    buffer = io.BytesIO()
    Image.new("RGB", size, "white").save(buffer, format="PNG")
    return buffer.getvalue()


def _rgb(png: bytes):
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        return image.convert("RGB")


def prompt_text(instruction: str, n_image_tokens: int) -> str:
    """The chat layout of Qwen2-VL, one image, up to the assistant's turn."""
    return (
        f"{IM_START} user {VISION_START} {IMAGE_PAD * n_image_tokens} {VISION_END} "
        f"{instruction} {IM_END} {IM_START} assistant"
    )


def image_tokens(grid_thw, merge: int) -> list[int]:
    """Tokens each image takes in the text after the vision tower merges ``merge``² patches."""
    return [int(t * h * w) // (merge * merge) for t, h, w in grid_thw.tolist()]


def make_batch(
    tokenizer, processor, pngs: Sequence[bytes], instruction: str | Sequence[str], targets=None
):
    """Model inputs of a batch (one instruction for all images, or one per image); with
    ``targets``, labels for the target tokens only (right padding, for training), else left
    padding (for generation)."""
    import torch

    vision = processor(images=[_rgb(p) for p in pngs], return_tensors="pt")
    counts = image_tokens(vision["image_grid_thw"], processor.merge_size)
    asked = [instruction] * len(pngs) if isinstance(instruction, str) else instruction
    prompts = [prompt_text(a, n) for a, n in zip(asked, counts, strict=True)]
    if targets is None:
        tokenizer.padding_side = "left"
        encoded = tokenizer(prompts, return_tensors="pt", padding=True)
        labels = None
    else:
        tokenizer.padding_side = "right"
        texts = [f"{p} {t} {IM_END}" for p, t in zip(prompts, targets, strict=True)]
        encoded = tokenizer(texts, return_tensors="pt", padding=True)
        prompt_lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
        labels = encoded["input_ids"].clone()
        for row, length in enumerate(prompt_lengths):
            labels[row, :length] = IGNORE
        labels[encoded["attention_mask"] == 0] = IGNORE
    batch = {
        "input_ids": encoded["input_ids"],
        "attention_mask": encoded["attention_mask"],
        "pixel_values": vision["pixel_values"],
        "image_grid_thw": vision["image_grid_thw"],
        # transformers 5 marks which text positions hold image tokens (1) for Qwen2-VL.
        "mm_token_type_ids": (
            encoded["input_ids"] == tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        ).to(torch.long),
    }
    if labels is not None:
        batch["labels"] = labels
    return batch


# --- training ----------------------------------------------------------------------------------


def _schedule(step: int, total: int, warmup: int) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train_phase(
    model,
    tokenizer,
    processor,
    examples: Sequence[Example],
    phase: str,
    steps: int,
    config: MiniConfig,
    device: str = "cpu",
    log: TrainingLog | None = None,
    max_seconds: float | None = None,
    progress: Callable[[int, float], None] | None = None,
    snapshot_at: Collection[int] = (),
) -> TrainingLog:
    """``steps`` optimizer steps of next-token loss on the ``phase`` targets of ``examples``
    (batches drawn without replacement, reshuffled each pass; seeded). Stops early after
    ``max_seconds`` of wall time. After each step count of ``snapshot_at`` the weights are kept
    in ``log.snapshots``: points along this one run (its learning rate still on its schedule),
    not shorter runs."""
    import torch

    if phase not in PHASES:
        raise MiniError(f"phase {phase!r} is not one of {PHASES}")
    if not examples:
        raise MiniError(f"no training examples for the {phase} phase")
    log = log or TrainingLog()
    model.to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    presence = None
    if config.presence_weight:
        if any(e.presence is None for e in examples):
            raise MiniError(
                "presence_weight needs each example's presence targets (Example.presence, "
                "as train.build_examples writes them); leave it at 0 to train on text alone"
            )
        presence = PresenceHead(model, config, device)
        trainable += list(presence.linear.parameters())
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _schedule(s, steps, config.warmup_steps)
    )
    rng = random.Random(f"{config.seed}-{phase}")
    order: list[int] = []
    start = time.perf_counter()
    for step in range(steps):
        if len(order) < config.batch_size:
            order = list(range(len(examples)))
            rng.shuffle(order)
        chosen = [examples[order.pop()] for _ in range(min(config.batch_size, len(examples)))]
        tasks = batch_phases(phase, len(chosen), config.perception_mix)
        blanked = blanked_rows(phase, len(chosen), config.unconditional_share)
        shown = [e.image for e in chosen]
        shown[len(shown) - blanked :] = [blank_like(png) for png in shown[len(shown) - blanked :]]
        batch = make_batch(
            tokenizer,
            processor,
            shown,
            [INSTRUCTIONS[t] for t in tasks],
            [e.targets[t] for e, t in zip(chosen, tasks, strict=True)],
        )
        batch = {k: v.to(device) for k, v in batch.items()}
        output = model(**batch)
        loss = output.loss
        if phase == "grounding" and config.evidence_weight != 1.0:
            marker = tokenizer.convert_tokens_to_ids(EVIDENCE)
            if marker == tokenizer.unk_token_id:
                raise MiniError(
                    f"evidence_weight needs {EVIDENCE!r} as one token of the vocabulary (the "
                    "mini's own tokenizer); leave it at 1 to fine-tune another model"
                )
            weights = evidence_weights(batch["input_ids"], marker, config.evidence_weight)
            loss = weighted_next_token_loss(output.logits, batch["labels"], weights)
        if presence is not None:
            targets = np.stack([e.presence for e in chosen])
            targets[len(chosen) - blanked :] = 0  # a blank image shows no event
            loss = loss + config.presence_weight * presence.loss(targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        log.loss[phase].append(float(loss.detach()))
        if step + 1 in snapshot_at:
            log.snapshots[step + 1] = trainable_weights(model)
        if progress:
            progress(step, log.loss[phase][-1])
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    if presence is not None:
        presence.close()
    log.seconds[phase] = log.seconds.get(phase, 0.0) + time.perf_counter() - start
    return log


class PresenceHead:
    """The auxiliary loss of ``presence_weight``: a linear head on the image tokens the vision
    tower hands the language model (caught by a hook on its forward pass), each token's logit
    per event kind; a column's logit is its rows' maximum (an event shows in its own lane),
    trained with binary cross-entropy against :func:`presence_targets`. Used in training only:
    the saved model has no head."""

    def __init__(self, model, config: MiniConfig, device: str = "cpu"):
        import torch

        self.grid = token_grid(config)
        width = model.get_input_embeddings().embedding_dim
        self.linear = torch.nn.Linear(width, len(EVENT_KINDS)).to(device)
        self._tokens = []
        self._hook = vision_tower(model).register_forward_hook(
            lambda module, args, output: self._tokens.append(output.pooler_output)
        )

    def loss(self, targets: np.ndarray):
        """Mean binary cross-entropy of the last forward pass's image tokens against
        ``targets`` (images, columns, kinds; NaN where unknown)."""
        import torch
        import torch.nn.functional as F

        tokens = self._tokens.pop()
        self._tokens.clear()
        logits = self.linear(tokens).view(len(targets), *self.grid, -1).amax(1)
        truth = torch.as_tensor(targets, dtype=logits.dtype, device=logits.device)
        known = ~truth.isnan()
        return F.binary_cross_entropy_with_logits(logits[known], truth[known])

    def close(self) -> None:
        self._hook.remove()


def batch_phases(phase: str, size: int, perception_mix: float) -> list[str]:
    """The task of each example of a batch of ``phase``: a grounding batch gives its first
    ``perception_mix`` share the perception instruction and target."""
    mixed = round(size * perception_mix) if phase == "grounding" else 0
    return ["perception"] * mixed + [phase] * (size - mixed)


def blanked_rows(phase: str, size: int, unconditional_share: float) -> int:
    """How many rows, at the end of a batch of ``phase``, are shown a blank image
    (``unconditional_share`` of a grounding batch)."""
    return round(size * unconditional_share) if phase == "grounding" else 0


def evidence_weights(input_ids, evidence_id: int, weight: float):
    """Per-token loss weights: ``weight`` on the tokens after the evidence marker (token
    ``evidence_id``), 1 before it."""
    import torch

    marker = (input_ids == evidence_id).int()
    after = (marker.cumsum(1) - marker) > 0
    return torch.where(after, weight, 1.0)


def weighted_next_token_loss(logits, labels, weights):
    """Next-token cross-entropy averaged with ``weights`` over the labelled tokens (with all
    weights 1, the model's own loss)."""
    import torch.nn.functional as F

    logits, labels, weights = logits[:, :-1], labels[:, 1:], weights[:, 1:]
    losses = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),
        labels.reshape(-1),
        ignore_index=IGNORE,
        reduction="none",
    ).view_as(labels)
    counted = (labels != IGNORE).float() * weights
    return (losses * counted).sum() / counted.sum()


def add_lora(model, rank: int = 8, alpha: int = 16, dropout: float = 0.05):
    """Wrap ``model`` with LoRA adapters (peft) on the attention and MLP projections of the
    language model; only the adapters (and the vision-language merger) are trained."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
        modules_to_save=["merger"],
    )
    return get_peft_model(model, lora)


# --- saving, loading, answering ----------------------------------------------------------------


def trainable_weights(model) -> dict:
    """Copies of the weights training changes, by name."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def snapshot_path(folder: str | Path, step: int) -> Path:
    """Where a saved model keeps its weights after ``step`` steps of the grounding phase."""
    return Path(folder) / SNAPSHOTS / f"grounding-{step}.pt"


def save(
    model,
    tokenizer,
    processor,
    folder: str | Path,
    settings: dict,
    snapshots: Mapping[int, dict] | None = None,
) -> Path:
    """Save a trained model as a Hugging Face folder (LoRA adapters merged into the weights),
    with ``settings`` (config, data, training log) in :data:`SETTINGS_FILE` and the weights of
    its grounding ``snapshots`` (step -> :func:`trainable_weights`) beside them."""
    import torch
    import transformers

    folder = Path(folder)
    partial = folder.with_name(folder.name + ".part")
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    with quiet_loading(transformers):
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        processor.save_pretrained(partial)
    (partial / SETTINGS_FILE).write_text(json.dumps(settings, indent=1, default=str))
    for step, weights in (snapshots or {}).items():
        path = snapshot_path(partial, step)
        path.parent.mkdir(exist_ok=True)
        torch.save(weights, path)
    if folder.exists():
        shutil.rmtree(folder)
    partial.replace(folder)
    return folder


@dataclass
class MiniModel:
    """A loaded SleepVLM-mini (or any Qwen2-VL-family folder with a tokenizer and image
    processor) that answers epoch images."""

    model: object
    tokenizer: object
    processor: object
    settings: dict
    device: str = "cpu"

    @classmethod
    def load(
        cls, folder: str | Path, device: str = "cpu", snapshot: int | None = None
    ) -> MiniModel:
        """A SleepVLM-mini folder, or a pretrained Qwen2-VL-family folder (a base to fine-tune);
        with ``snapshot``, the folder's model as it was after that many grounding steps."""
        import torch
        import transformers

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise MiniError(
                f"{folder} holds no model (config.json missing): train one with "
                "sleepvlm.explain.train_mini or run chapter 11 (sleepvlm book --only 11)"
            )
        settings_path = folder / SETTINGS_FILE
        settings = json.loads(settings_path.read_text()) if settings_path.is_file() else {}
        config = settings.get("config") or {}
        verbosity = transformers.utils.logging.get_verbosity()
        if config.get("column_embedding"):
            # its loader reports the one weight Qwen2-VL lacks; _load_column_embedding sets it
            transformers.utils.logging.set_verbosity_error()
        try:
            with quiet_loading(transformers):
                model = transformers.AutoModelForImageTextToText.from_pretrained(folder)
                tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
                processor = transformers.Qwen2VLImageProcessorPil.from_pretrained(folder)
        finally:
            transformers.utils.logging.set_verbosity(verbosity)
        if config.get("column_embedding"):
            _load_column_embedding(model, MiniConfig(**config), folder)
        if snapshot is not None:
            path = snapshot_path(folder, snapshot)
            if not path.is_file():
                raise MiniError(
                    f"{folder} keeps no snapshot after {snapshot} grounding steps; it keeps "
                    f"{settings.get('snapshot_steps') or 'none'} (train_mini's snapshots)"
                )
            unexpected = model.load_state_dict(torch.load(path), strict=False).unexpected_keys
            if unexpected:
                raise MiniError(f"{path} holds weights the model lacks: {unexpected[:3]}")
        return cls(model.to(device).eval(), tokenizer, processor, settings, device)

    def image_tokens(
        self, pngs: Sequence[bytes], batch_size: int = 32, merged: bool = True
    ) -> np.ndarray:
        """(images, rows, columns, width): the tokens the vision tower hands the language
        model for each image, on their grid (:func:`token_grid`); with ``merged`` False, its
        patch states before the merge (``spatial_merge`` times as many rows and columns, as
        wide as the vision tower), whose columns are that much narrower in time."""
        import torch

        config = MiniConfig(**self.settings["config"])
        rows, columns = token_grid(config)
        merge = config.spatial_merge
        out = []
        for start in range(0, len(pngs), batch_size):
            batch = make_batch(self.tokenizer, self.processor, pngs[start : start + batch_size], "")
            with torch.inference_mode():
                found = self.model.get_image_features(
                    batch["pixel_values"].to(self.device), batch["image_grid_thw"].to(self.device)
                )
            if merged:
                out.extend(
                    t.view(rows, columns, -1).float().cpu().numpy() for t in found.pooler_output
                )
                continue
            # The processor orders an image's patches merge block by merge block (each block's
            # merge × merge patches row by row); laid back on the image's patch grid here.
            states = found.last_hidden_state.float().cpu()
            blocks = states.view(-1, rows, columns, merge, merge, states.shape[-1])
            grid = blocks.permute(0, 1, 3, 2, 4, 5).reshape(
                -1, rows * merge, columns * merge, states.shape[-1]
            )
            out.extend(grid.numpy())
        return np.stack(out)

    def image_options(self) -> ImageOptions | None:
        """The options of the images this model was trained on (None for a base model folder
        without SleepVLM-mini settings)."""
        config = self.settings.get("config")
        return MiniConfig(**config).image_options() if config else None

    def lane_problems(self, pngs: Sequence[bytes]) -> list[dict[str, str]]:
        """Per image, what keeps it from being read as one drawn at the model's options
        (:func:`sleepvlm.render.lane_problems`): empty for an image the model can read, and
        for every image of a model without options of its own."""
        options = self.image_options()
        return [lane_problems(p, options) if options else {} for p in pngs]

    def decode_batch(
        self,
        pngs: Sequence[bytes],
        phase: str,
        processors: Callable[[int], list],
        max_new_tokens: int,
        scored: bool,
    ):
        """Greedy decoding of one batch of ``pngs`` to ``phase``'s instruction, with the logits
        processors ``processors(prompt length)`` gives, up to ``max_new_tokens``; with
        ``scored``, each step's scores kept. Returns transformers' generate output and the
        prompt's length (where the answers begin in its sequences)."""
        import torch

        batch = make_batch(self.tokenizer, self.processor, pngs, INSTRUCTIONS[phase])
        batch = {k: v.to(self.device) for k, v in batch.items()}
        start = batch["input_ids"].shape[1]
        with torch.inference_mode():
            output = self.model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=self.tokenizer.convert_tokens_to_ids(IM_END),
                pad_token_id=self.tokenizer.convert_tokens_to_ids(PAD),
                return_dict_in_generate=True,
                output_scores=scored,
                logits_processor=processors(start),
            )
        return output, start

    def generate(
        self,
        pngs: Sequence[bytes],
        phase: str = "grounding",
        contrast: Contrast | None = None,
        guide: ProbeGuidance | None = None,
    ) -> list[str]:
        """Greedy answers for a batch of epoch images; an image that cannot be read as one
        drawn at the model's options (:func:`sleepvlm.render.lane_problems`) is answered with
        :func:`unreadable_answer`, not shown to the model, which never learnt what a blank,
        resized or flat-lane image holds and would cite evidence from it. With ``contrast``,
        decoded contrastively against a negative of each image
        (:mod:`sleepvlm.explain.contrast`) instead; with ``guide``, with the evidence's times
        guided by a probe of the vision tower (:mod:`sleepvlm.explain.guidance`)."""
        return [answer.text for answer in self._answers(pngs, phase, False, contrast, guide)]

    def generate_scored(
        self,
        pngs: Sequence[bytes],
        phase: str = "grounding",
        contrast: Contrast | None = None,
        guide: ProbeGuidance | None = None,
    ) -> list[ScoredAnswer]:
        """:meth:`generate`'s answers with the probability of each character's token (an
        unreadable image's answer is certain: the model did not write it)."""
        return self._answers(pngs, phase, True, contrast, guide)

    def _answers(
        self,
        pngs: Sequence[bytes],
        phase: str,
        scored: bool,
        contrast: Contrast | None,
        guide: ProbeGuidance | None,
        stages: Sequence[str] | None = None,
    ) -> list[ScoredAnswer]:
        problems = self.lane_problems(pngs)
        readable = [p for p, found in zip(pngs, problems, strict=True) if not found]
        if stages is not None:
            stages = [s for s, found in zip(stages, problems, strict=True) if not found]
        answers = iter(
            self._generate(readable, phase, scored, contrast, guide, stages) if readable else []
        )
        return [
            ScoredAnswer.certain(unreadable_answer(found)) if found else next(answers)
            for found in problems
        ]

    def _generate(
        self,
        pngs: Sequence[bytes],
        phase: str,
        scored: bool,
        contrast: Contrast | None,
        guide: ProbeGuidance | None,
        stages: Sequence[str] | None = None,
    ) -> list[ScoredAnswer]:
        """Greedy answers, or contrastive ones with ``contrast`` (each image's negative answered
        in the rows after the images); with ``stages``, each answer's stage fixed to its image's
        (:class:`sleepvlm.explain.night_stages.ChosenStages`); with ``scored``, each character's
        token probability (decoding every prefix of the answer: kept off the served path, which
        needs the text only)."""
        import torch

        from sleepvlm.explain.night_stages import ChosenStages  # it imports this module

        max_new = self.settings.get("config", {}).get("max_new_tokens", 64)
        shown = [*pngs, *contrast.negatives(pngs)] if contrast else list(pngs)
        marker = self.tokenizer.convert_tokens_to_ids(EVIDENCE)
        if contrast and contrast.evidence_only and marker == self.tokenizer.unk_token_id:
            raise MiniError(
                f"contrastive decoding of the evidence only needs {EVIDENCE!r} as one token of "
                "the vocabulary (the mini's own tokenizer); contrast the whole answer instead"
            )
        if contrast and (guide or stages is not None):
            raise MiniError(
                "contrastive decoding and probe guidance or chosen stages are separate levers: "
                "answer with one"
            )
        processors = [contrast.logits(len(pngs), marker)] if contrast else []
        if guide:
            processors.extend(guide.logits(self, pngs))

        def with_stages(start: int) -> list:
            chosen = [ChosenStages.of(self.tokenizer, start, stages)] if stages is not None else []
            return [*processors, *chosen]

        output, start = self.decode_batch(shown, phase, with_stages, max_new, scored)
        # the real images' rows (a contrast's negatives follow them, writing the same tokens)
        new = output.sequences[: len(pngs), start:]
        if not scored:
            texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
            return [ScoredAnswer(t.strip(), np.full(len(t.strip()), np.nan)) for t in texts]
        scores = torch.stack(output.scores, 1)[: len(pngs)]
        chosen = scores.softmax(-1).gather(2, new.unsqueeze(-1))
        return [
            _scored_text(self.tokenizer, ids, probs)
            for ids, probs in zip(new.tolist(), chosen.squeeze(-1).tolist(), strict=True)
        ]

    def answer_all(
        self,
        pngs: Sequence[bytes],
        batch_size: int = 16,
        scored: bool = False,
        phase: str = "grounding",
        contrast: Contrast | None = None,
        guide: ProbeGuidance | None = None,
        stages: Sequence[str] | None = None,
    ) -> list[ScoredAnswer]:
        """Answers to any number of images (to ``phase``'s instruction), ``batch_size`` at a
        time; with ``scored``, with each character's token probability
        (:meth:`generate_scored`); with ``contrast`` or ``guide``, decoded so
        (:meth:`generate`); with ``stages`` (one per image), each answer giving its image's
        stage, the rest written after it."""
        if stages is not None and len(stages) != len(pngs):
            raise MiniError(f"{len(stages)} stages chosen for {len(pngs)} images: give one each")
        answers = []
        for start in range(0, len(pngs), batch_size):
            chunk = pngs[start : start + batch_size]
            chosen = None if stages is None else stages[start : start + batch_size]
            answers.extend(self._answers(chunk, phase, scored, contrast, guide, chosen))
        return answers


def _load_column_embedding(model, config: MiniConfig, folder: Path) -> None:
    """Add the column embedding to a model loaded from ``folder`` with its saved weights
    (transformers' loader drops weights its architecture lacks)."""
    from safetensors import safe_open

    add_column_embedding(model, config)
    with safe_open(folder / "model.safetensors", framework="pt") as saved:
        # saved under the checkpoint's own prefix (transformers renames the vision tower's)
        found = [k for k in saved.keys() if k.endswith("column_embedding")]
        if not found:
            raise MiniError(f"{folder}: its settings ask for a column embedding it does not hold")
        weights = saved.get_tensor(found[0])
    vision_tower(model).column_embedding.data.copy_(weights)


@dataclass(frozen=True)
class ScoredAnswer:
    """An answer and, for each of its characters, the probability the model gave the token
    that wrote it: how sure it was of each word and each cited time."""

    text: str
    confidence: np.ndarray

    @classmethod
    def certain(cls, text: str) -> ScoredAnswer:
        return cls(text, np.ones(len(text)))

    def least_confidence(self, start: int, stop: int) -> float:
        """The least sure token's probability among the characters ``start:stop``."""
        span = self.confidence[start:stop]
        return float(span.min()) if len(span) else 1.0


def _scored_text(tokenizer, ids: list[int], probs: list[float]) -> ScoredAnswer:
    """The decoded answer with each character's token probability: the text of every prefix
    of the tokens is decoded, so a token's characters are those its decoding adds (a word-level
    tokenizer decodes the spaces between words, not inside tokens)."""
    confidence: list[float] = []
    text = ""
    for end, prob in enumerate(probs, start=1):
        longer = tokenizer.decode(ids[:end], skip_special_tokens=True)
        confidence += [prob] * (len(longer) - len(text))
        text = longer
    lead = len(text) - len(text.lstrip())
    stripped = text.strip()
    return ScoredAnswer(stripped, np.array(confidence[lead : lead + len(stripped)], dtype=float))


def unreadable_answer(problems: dict[str, str]) -> str:
    """The answer to an image that cannot be read: what is wrong with it, and no stage and no
    evidence (it is scored as an invalid answer, not as a guess)."""
    return (
        f"Unreadable image: {'; '.join(problems.values())}. No sleep stage and no evidence "
        "can be read from it."
    )


class BatchingAnswerer:
    """Serves a :class:`MiniModel` to concurrent callers: requests arriving while a batch runs
    are answered together in the next one, so the harness's concurrent requests share the
    model's batched generation."""

    def __init__(self, model: MiniModel, max_batch: int = 64, wait_s: float = 0.01):
        self.model = model
        self.max_batch = max_batch
        self.wait_s = wait_s
        self._queue: Queue = Queue()
        self._worker = threading.Thread(target=self._serve, daemon=True)
        self._worker.start()

    def __call__(self, png: bytes) -> str:
        done: Future = Future()
        self._queue.put((png, done))
        return done.result()

    def _serve(self) -> None:
        while True:
            waiting = [self._queue.get()]
            deadline = time.monotonic() + self.wait_s
            while len(waiting) < self.max_batch:
                try:
                    waiting.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except Empty:
                    break
            try:
                answers = self.model.generate([png for png, _ in waiting])
            except Exception as err:  # handed to each caller; the server keeps serving
                for _, done in waiting:
                    done.set_exception(err)
                continue
            for (_, done), answer in zip(waiting, answers, strict=True):
                done.set_result(answer)


def settings_of(config: MiniConfig, **extra) -> dict:
    return {"config": asdict(config), **extra}
