"""Tiny random models for tests and examples, never for results.

Each builder writes a randomly initialised model folder (config, weights, tokenizer, and for
the vision-language model an image processor and chat template) that the ``transformers``
backend loads like any downloaded checkpoint, so the harness runs end to end on a CPU in
seconds without a download. Their answers are noise: greedy, hence reproducible, but
meaningless.

- :func:`build_tiny_text_model`: a two-layer Llama with a word-level tokenizer.
- :func:`build_tiny_vlm`: a Qwen2-VL or Qwen2.5-VL with a one-block vision tower, a Qwen-style
  chat template and the Qwen vision special tokens, behind ``AutoProcessor``.
"""

from __future__ import annotations

from pathlib import Path

from sleepvlm.data.records import STAGES

from .backends import image_only
from .errors import ModelError

#: Ordinary words of the tiny vocabulary: chat roles, the stage labels and a few prompt words,
#: so that prompts and answers tokenize to something other than ``<unk>``.
WORDS: tuple[str, ...] = ("user", "assistant", "system", *STAGES, "Stage?", "stage", "epoch", ":")
#: Special tokens of Qwen2-VL / Qwen2.5-VL chat prompts (names as in the Qwen tokenizers).
QWEN_SPECIALS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
#: The Qwen chat layout, reduced to what the harness sends: typed parts with image placeholders,
#: or plain strings.
QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for part in m['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
#: Image sizes the tiny VLM's processor resizes to: a 448 x 224 epoch image becomes 112 x 56
#: pixels, 8 x 4 patches of 14 pixels, 8 image tokens after the 2 x 2 merge.
TINY_MIN_PIXELS = 28 * 28
TINY_MAX_PIXELS = 112 * 56
VLM_FAMILIES: tuple[str, ...] = ("qwen2_vl", "qwen2_5_vl")


def _word_tokenizer(
    specials: tuple[str, ...], bos: str | None, eos: str, pad: str, chat_template: str
):
    """A fast tokenizer over ``specials`` + :data:`WORDS` (whitespace-split, unknown words map
    to ``<unk>``), with ``chat_template``."""
    import tokenizers
    import transformers

    vocab = [*specials, "<unk>", *WORDS]
    model = tokenizers.models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>")
    backend = tokenizers.Tokenizer(model)
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    backend.decoder = tokenizers.decoders.WordPiece(prefix="##")  # joins words with spaces
    backend.add_special_tokens([tokenizers.AddedToken(s, special=True) for s in specials])
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token=bos, eos_token=eos, pad_token=pad
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def build_tiny_text_model(folder: str | Path) -> Path:
    """A two-layer random Llama (hidden size 16) with a word-level tokenizer and a plain chat
    template, saved in ``folder``; returns the folder."""
    import transformers

    folder = Path(folder)
    tokenizer = _word_tokenizer(
        ("<pad>", "<s>", "</s>"),
        bos="<s>",
        eos="</s>",
        pad="<pad>",
        chat_template=(
            "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
            "{% if add_generation_prompt %}assistant : {% endif %}"
        ),
    )
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    transformers.set_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _vlm_config(family: str, token_ids: dict[str, int], vocab_size: int, hidden: int = 32):
    import transformers

    text = {
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        # M-RoPE splits each head's rotary half (head_dim / 2 = 4) into time, height, width.
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [2, 1, 1],
        },
        "bos_token_id": token_ids["<|endoftext|>"],
        "eos_token_id": token_ids["<|im_end|>"],
        "pad_token_id": token_ids["<|endoftext|>"],
    }
    vision = {"depth": 1, "num_heads": 2, "patch_size": 14, "spatial_merge_size": 2}
    if family == "qwen2_vl":
        vision |= {"embed_dim": hidden, "hidden_size": hidden, "mlp_ratio": 2}
        config_class = transformers.Qwen2VLConfig
    else:
        vision |= {
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "out_hidden_size": hidden,
            "window_size": 56,
            "fullatt_block_indexes": [0],
        }
        config_class = transformers.Qwen2_5_VLConfig
    return config_class(
        text_config=text,
        vision_config=vision,
        image_token_id=token_ids["<|image_pad|>"],
        video_token_id=token_ids["<|video_pad|>"],
        vision_start_token_id=token_ids["<|vision_start|>"],
        vision_end_token_id=token_ids["<|vision_end|>"],
        eos_token_id=token_ids["<|im_end|>"],
        pad_token_id=token_ids["<|endoftext|>"],
    )


def build_tiny_vlm(folder: str | Path, family: str = "qwen2_vl") -> Path:
    """A random Qwen2-VL (``family="qwen2_vl"``) or Qwen2.5-VL (``"qwen2_5_vl"``): one vision
    block, two text layers, hidden size 32, a word-level tokenizer with the Qwen special
    tokens and chat template, and an image processor that shrinks images to at most
    :data:`TINY_MAX_PIXELS`; saved in ``folder`` for ``AutoProcessor`` and
    ``AutoModelForImageTextToText``. Returns the folder."""
    import transformers

    if family not in VLM_FAMILIES:
        raise ModelError(f"tiny VLM family {family!r} is not one of {VLM_FAMILIES}")
    folder = Path(folder)
    tokenizer = _word_tokenizer(
        QWEN_SPECIALS,
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    token_ids = {s: tokenizer.convert_tokens_to_ids(s) for s in QWEN_SPECIALS}
    config = _vlm_config(family, token_ids, vocab_size=len(tokenizer))
    # The PIL image processor: the default one needs torchvision.
    image_processor = transformers.Qwen2VLImageProcessorPil(
        min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS
    )
    processor_class = (
        transformers.Qwen2VLProcessor if family == "qwen2_vl" else transformers.Qwen2_5_VLProcessor
    )
    # Without the video processor, which needs torchvision; saved under the original name.
    processor = image_only(processor_class)(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN_CHAT_TEMPLATE
    )
    model_class = (
        transformers.Qwen2VLForConditionalGeneration
        if family == "qwen2_vl"
        else transformers.Qwen2_5_VLForConditionalGeneration
    )
    transformers.set_seed(0)
    model_class(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    # The legacy image-processor file as in published Qwen-VL checkpoints: with torchvision
    # installed, AutoProcessor builds the video processor from it.
    image_processor.save_pretrained(folder)
    return folder


#: Chat template of the tiny GGUF model (ChatML, as SmolLM2's).
_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tiny_gguf(path: str | Path, seed: int = 0) -> dict:
    """A one-layer random Llama (hidden size 16) with a byte-level BPE tokenizer and a ChatML
    template, written as a GGUF file at ``path`` with the ``gguf`` package, as llama.cpp writes
    real models; returns the tensors written (float32, by GGUF name)."""
    import gguf
    import numpy as np
    from tokenizers.pre_tokenizers import ByteLevel

    hidden, ffn, heads = 16, 32, 2
    # Every byte's character, one merge (so the tokenizer is a real BPE), the ChatML markers.
    tokens = [*sorted(ByteLevel.alphabet()), "ĠS", "<|im_start|>", "<|im_end|>"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_block_count(1)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (len(tokens) - 2) + [3, 3])  # 3: control tokens
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_merges(["Ġ S"])
    writer.add_bos_token_id(len(tokens) - 2)
    writer.add_eos_token_id(len(tokens) - 1)
    writer.add_pad_token_id(len(tokens) - 1)
    writer.add_chat_template(_CHATML)
    rng = np.random.default_rng(seed)
    shapes = {
        "token_embd.weight": (len(tokens), hidden),
        "output_norm.weight": (hidden,),
        "output.weight": (len(tokens), hidden),
        "blk.0.attn_norm.weight": (hidden,),
        "blk.0.ffn_norm.weight": (hidden,),
        "blk.0.attn_q.weight": (hidden, hidden),
        "blk.0.attn_k.weight": (hidden, hidden),
        "blk.0.attn_v.weight": (hidden, hidden),
        "blk.0.attn_output.weight": (hidden, hidden),
        "blk.0.ffn_gate.weight": (ffn, hidden),
        "blk.0.ffn_up.weight": (ffn, hidden),
        "blk.0.ffn_down.weight": (hidden, ffn),
    }
    tensors = {name: rng.normal(0, 0.5, shape).astype(np.float32) for name, shape in shapes.items()}
    for name, values in tensors.items():
        writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tensors
