"""The tiny base policy: a character-level tokenizer and a small Llama model shipped with the package.

    from rlentropy.models.tiny import load_shipped_policy, make_random_tiny_policy
    model, tok = load_shipped_policy()                  # the warm-started countdown policy (CPU, fp32)
    model, tok = make_random_tiny_policy(seed=0)        # random weights, hidden 32, 2 layers: for tests

The tokenizer maps each printable ASCII character and "\\n" to one token, plus four specials:
<pad>=0, <bos>=1, <eos>=2, <unk>=3 (vocabulary of 100). Encoding prepends <bos>; decoding concatenates
characters. It is a `tokenizers` WordLevel model behind `PreTrainedTokenizerFast`, so
`AutoTokenizer.from_pretrained` loads it from the saved `tokenizer.json`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = [
    "SPECIAL_TOKENS",
    "build_tokenizer",
    "tiny_llama_config",
    "make_random_tiny_policy",
    "shipped_policy_path",
    "load_shipped_policy",
]

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
_CHARS = ["\n"] + [chr(c) for c in range(32, 127)]


def build_tokenizer() -> Any:
    """The character-level tokenizer (a `PreTrainedTokenizerFast`, vocabulary 100, <bos> prepended)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(list(SPECIAL_TOKENS) + _CHARS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one piece per char
    core.decoder = decoders.Fuse()  # concatenate, no spaces between pieces
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
        model_max_length=512,
    )


def tiny_llama_config(**overrides: Any) -> Any:
    """A `LlamaConfig` for the character tokenizer. Defaults are the shipped policy's shape:
    hidden 128, 4 layers, 4 heads, MLP 384, tied embeddings, context 128 (about 0.8M parameters).
    Any `LlamaConfig` field can be overridden."""
    from transformers import LlamaConfig

    params: dict[str, Any] = dict(
        vocab_size=len(SPECIAL_TOKENS) + len(_CHARS),
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        attention_dropout=0.0,
        initializer_range=0.02,
    )
    params.update(overrides)
    return LlamaConfig(**params)


def make_random_tiny_policy(seed: int, hidden: int = 32, layers: int = 2, heads: int = 2, **overrides: Any):
    """A randomly initialised tiny Llama and the character tokenizer, for fast tests.

    Args:
        seed: seeds a local fork of the torch RNG (the global RNG state is left untouched).
        hidden, layers, heads: model shape; the MLP is 2 × hidden wide.
        overrides: any further `LlamaConfig` field.

    Returns:
        (model in eval mode, fp32 on CPU, tokenizer).
    """
    from transformers import GenerationConfig, LlamaForCausalLM

    if hidden % heads != 0:
        raise ValueError(f"hidden: must be a multiple of heads ({heads}), got {hidden}")
    cfg = tiny_llama_config(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        **overrides,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # Random-init models read like real ones: std 0.02 gives near-uniform next-token distributions.
        model = LlamaForCausalLM(cfg)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model.eval()
    return model, build_tokenizer()


def shipped_policy_path() -> Path:
    """Directory of the shipped base policy (`rlentropy/assets/tiny-countdown`)."""
    return Path(__file__).resolve().parent.parent / "assets" / "tiny-countdown"


def load_shipped_policy(*, dtype: torch.dtype = torch.float32):
    """Load the shipped base policy and its tokenizer with `from_pretrained`.

    Returns:
        (LlamaForCausalLM in eval mode on CPU, tokenizer).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = shipped_policy_path()
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{path}: the shipped tiny policy is missing; rebuild it with `rlentropy pretrain --out {path}`"
        )
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.eval()
    return model, AutoTokenizer.from_pretrained(path)
