"""Load the policy (and an optional frozen reference model) for training and evaluation.

`ModelConfig` is the `model:` section of a training config. `load_policy(cfg)` resolves where the
weights come from, checks that they exist before any heavy work, applies the model options (LoRA via
peft, gradient checkpointing, 4-bit base via bitsandbytes) and returns a `LoadedPolicy`.

Where the weights come from (`model.path`):
    * null or "tiny": the tiny countdown policy shipped inside the package (`rlentropy.models.tiny`);
    * a local directory written by `save_pretrained` (an HF model, or a checkpoint of one of our runs);
    * a path ending in ".gguf" (or a GGUF alias such as "smollm2-135m"): `rlentropy.models.gguf`;
    * a Hugging Face hub name ("Qwen/Qwen2.5-1.5B-Instruct"): only when it is already in the local HF
      cache (`local_files_only=True`); nothing is ever downloaded implicitly. Set
      `model.allow_download: true` to let transformers fetch it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from rlentropy.errors import ConfigError


class LoraConfig(BaseModel):
    """`model.lora:` LoRA adapters via peft (off by default: full-parameter training).

    Attributes:
        enabled: train LoRA adapters instead of every parameter.
        r: adapter rank. alpha: scaling numerator (scale = alpha / r). dropout: adapter dropout.
        target_modules: module names to adapt, or "all-linear" (every linear layer except the LM head).
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    r: int = Field(default=16, ge=1)
    alpha: float = Field(default=32.0, gt=0)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class ModelConfig(BaseModel):
    """`model:` section: which weights, which dtype, which memory options.

    Attributes:
        path: null / "tiny" (shipped tiny policy), a local HF directory, a `.gguf` file or alias, or a
            hub name that is already cached locally.
        tokenizer: tokenizer location when it differs from `path`.
        dtype: parameter dtype. "auto" = float32 on CPU, bfloat16 on GPU.
        bf16_autocast: run forwards under bf16 autocast when on a GPU (ignored on CPU).
        gradient_checkpointing: recompute activations in the backward pass (saves memory).
        load_in_4bit: 4-bit NF4 base weights via bitsandbytes (GPU only; needs LoRA).
        allow_download: let transformers download a hub model that is not cached.
        lora: LoRA settings.
    """

    model_config = ConfigDict(extra="forbid")

    path: str | None = None
    tokenizer: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    bf16_autocast: bool = True
    gradient_checkpointing: bool = False
    load_in_4bit: bool = False
    allow_download: bool = False
    lora: LoraConfig = Field(default_factory=LoraConfig)


@dataclass
class LoadedPolicy:
    """What `load_policy` returns.

    Attributes:
        model: the trainable policy (a peft `PeftModel` when LoRA is on).
        tokenizer: its tokenizer (left padding set for generation).
        source: a human-readable description of where the weights came from.
        base_path: the directory / name the base weights were read from (None for the shipped default).
    """

    model: torch.nn.Module
    tokenizer: Any
    source: str
    base_path: str | None


def _torch_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def is_gguf(path: str | None) -> bool:
    """True when `path` names a GGUF file or a known GGUF alias (loaded by `rlentropy.models.gguf`)."""
    if path is None:
        return False
    from rlentropy.models.gguf import GGUF_ALIASES

    return path.lower().endswith(".gguf") or path in GGUF_ALIASES


def resolve_model_source(path: str | None, *, allow_download: bool = False) -> tuple[str, str | None]:
    """Classify `model.path` and check it exists, before any heavy work.

    Args:
        path: the configured `model.path`.
        allow_download: whether an uncached hub name may be fetched.

    Returns:
        (kind, location) with kind in {"shipped", "local", "gguf", "hub"}.

    Raises:
        ConfigError: a local path that does not exist, or a hub name that is not cached.
    """
    if path is None or path == "tiny":
        return "shipped", None
    if is_gguf(path):
        from rlentropy.models.gguf import resolve_gguf

        try:
            resolve_gguf(path)  # raises ConfigError naming model.path when missing
        except (OSError, ValueError) as err:
            raise ConfigError(f"model.path: GGUF {path!r} cannot be found: {err}") from None
        return "gguf", path
    p = Path(path).expanduser()
    looks_local = path.startswith((".", "/", "~")) or p.exists() or path.count("/") > 1
    if p.is_dir():
        if not (p / "config.json").is_file() and not (p / "adapter_config.json").is_file():
            raise ConfigError(f"model.path: {path!r} is a directory without config.json (not an HF model)")
        return "local", str(p)
    if p.exists():
        what = "a file" if p.is_file() else "not a directory"
        raise ConfigError(
            f"model.path: {path!r} is {what}, not a model directory (expected a local HF model directory "
            "with config.json, a .gguf file, 'tiny', or a cached hub name)"
        )
    if looks_local:
        raise ConfigError(
            f"model.path: {path!r} does not exist (expected a local HF model directory, "
            "a .gguf file, 'tiny', or a cached hub name like 'Qwen/Qwen2.5-1.5B')"
        )
    if not allow_download:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(path, "config.json")
        except Exception:  # noqa: BLE001 - any hub-side failure means "not usable offline"
            cached = None
        if not isinstance(cached, str):
            raise ConfigError(
                f"model.path: hub model {path!r} is not in the local Hugging Face cache and "
                "model.allow_download is false (download it first, or set it to true)"
            )
    return "hub", path


def _quantization_config(cfg: ModelConfig, device: torch.device) -> Any:
    if not cfg.load_in_4bit:
        return None
    # The device first: on a machine without a GPU, installing bitsandbytes would not help.
    if device.type != "cuda":
        raise ConfigError("model.load_in_4bit: 4-bit base weights need a CUDA GPU; none is available here")
    if not cfg.lora.enabled:
        raise ConfigError("model.load_in_4bit: a 4-bit base cannot be trained directly; set model.lora.enabled=true")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ConfigError("model.load_in_4bit: needs the bitsandbytes package (pip install bitsandbytes)") from err
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)


def _load_base(
    cfg: ModelConfig, device: torch.device, weights_dir: str | None
) -> tuple[torch.nn.Module, Any, str, str | None]:
    """The base CausalLM and tokenizer, from `weights_dir` when given (a full-parameter checkpoint)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kind, location = resolve_model_source(cfg.path, allow_download=cfg.allow_download)
    dtype = _torch_dtype(cfg.dtype, device)
    quant = _quantization_config(cfg, device)
    if weights_dir is None and kind == "shipped":
        from rlentropy.models.tiny import shipped_policy_path

        location = str(shipped_policy_path())
    if weights_dir is None and kind == "gguf":
        # Seam for the GGUF loader: returns (model, tokenizer).
        from rlentropy.models.gguf import load_gguf_policy

        model, tokenizer = load_gguf_policy(location, dtype=dtype)
        return model, tokenizer, f"gguf:{location}", location
    src = weights_dir or location
    local_only = not (kind == "hub" and cfg.allow_download)
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": local_only}
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": device.index or 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(src, **kwargs)
    except OSError as err:
        raise ConfigError(f"model.path: cannot load a causal LM from {src!r}: {str(err).splitlines()[0]}") from err
    tok_src = cfg.tokenizer or (
        weights_dir if weights_dir and Path(weights_dir, "tokenizer_config.json").exists() else location
    )
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_src, local_files_only=local_only)
    except OSError as err:
        raise ConfigError(f"model.tokenizer: cannot load a tokenizer from {tok_src!r}") from err
    return model, tokenizer, f"{kind}:{src}", location


CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def context_length(config: Any) -> int | None:
    """The longest sequence (prompt + response, in tokens) a model config declares, or None."""
    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in CONTEXT_KEYS:
        value = getattr(text, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def load_tokenizer(cfg: ModelConfig, *, checkpoint: str | Path | None = None) -> tuple[Any, int | None]:
    """(tokenizer, context length) of the policy `cfg` (and `checkpoint`) describes, without its weights.

    Cheap next to `load_policy`: the tokenizer files and config.json only (a GGUF is converted to its
    cached HF copy first, which `load_policy` would do anyway). The context is None when the config
    declares none.
    """
    from transformers import AutoConfig, AutoTokenizer

    kind, location = resolve_model_source(cfg.path, allow_download=cfg.allow_download)
    if kind == "shipped":
        from rlentropy.models.tiny import shipped_policy_path

        location = str(shipped_policy_path())
    elif kind == "gguf":
        from rlentropy.models.gguf import cached_gguf_dir

        location = str(cached_gguf_dir(location))
    ckpt = Path(checkpoint) if checkpoint is not None else None
    local_only = not (kind == "hub" and cfg.allow_download)
    tok_src = cfg.tokenizer or (str(ckpt) if ckpt and (ckpt / "tokenizer_config.json").exists() else location)
    conf_src = str(ckpt) if ckpt and (ckpt / "config.json").is_file() else location
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_src, local_files_only=local_only)
    except OSError as err:
        raise ConfigError(f"model.tokenizer: cannot load a tokenizer from {tok_src!r}") from err
    try:
        config = AutoConfig.from_pretrained(conf_src, local_files_only=local_only)
    except (OSError, ValueError):
        config = None
    return tokenizer, context_length(config)


@dataclass
class ModelInspection:
    """What `load_policy` would load, read without the weights (`inspect_model`).

    Attributes:
        kind: "shipped", "local", "gguf" or "hub". location: the directory, file or hub name.
        config: the model's `PretrainedConfig`, or None (a hub model not in the local cache).
        tokenizer: its tokenizer, or None (likewise).
        cached: False for a hub model whose config.json is not in the local Hugging Face cache.
        weights: the weight files found (names), empty when not looked for (hub, GGUF).
    """

    kind: str
    location: str | None
    config: Any = None
    tokenizer: Any = None
    cached: bool = True
    weights: tuple[str, ...] = ()


WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "adapter_model.*")


def inspect_model(cfg: ModelConfig) -> ModelInspection:
    """The config and tokenizer of the policy `cfg` names, without loading, downloading or converting
    weights: `rlentropy check`'s view of the model.

    Raises:
        ConfigError: what `load_policy` would raise about the path (missing, a file, no config.json), or
            an unreadable config / tokenizer.
    """
    from transformers import AutoConfig, AutoTokenizer

    kind, location = resolve_model_source(cfg.path, allow_download=True)  # the cache is looked at below
    if kind == "gguf":
        from rlentropy.models.gguf import gguf_config_and_tokenizer

        config, tokenizer = gguf_config_and_tokenizer(location)
        if cfg.tokenizer:
            tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer, local_files_only=True)
        return ModelInspection(kind, location, config, tokenizer)
    if kind == "shipped":
        from rlentropy.models.tiny import shipped_policy_path

        location = str(shipped_policy_path())
    if kind == "hub":
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = isinstance(try_to_load_from_cache(location, "config.json"), str)
        except Exception:  # noqa: BLE001 - any hub-side failure means "not usable offline"
            cached = False
        if not cached:
            return ModelInspection(kind, location, cached=False)
    weights: tuple[str, ...] = ()
    if kind in ("shipped", "local"):
        weights = tuple(sorted({f.name for pat in WEIGHT_PATTERNS for f in Path(location).glob(pat)}))
    try:
        config = AutoConfig.from_pretrained(location, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"model.path: cannot read the model config of {location!r}: {str(err).splitlines()[0]}"
        ) from None
    tok_src = cfg.tokenizer or location
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_src, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"model.tokenizer: cannot load a tokenizer from {tok_src!r}: {str(err).splitlines()[0]}"
        ) from None
    return ModelInspection(kind, location, config, tokenizer, weights=weights)


def _apply_lora(model: torch.nn.Module, cfg: LoraConfig) -> torch.nn.Module:
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets: Any = cfg.target_modules
    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        peft_model = get_peft_model(model, peft_cfg)
    except ValueError as err:
        raise ConfigError(f"model.lora.target_modules: {str(err).splitlines()[0]}") from err
    head = peft_model.get_output_embeddings()
    if hasattr(head, "lora_A"):
        raise ConfigError(
            "model.lora.target_modules: the LM head cannot carry a LoRA adapter "
            "(token statistics read its weight directly); drop it from the list"
        )
    return peft_model


def load_policy(
    cfg: ModelConfig, *, device: torch.device | str = "cpu", checkpoint: str | Path | None = None
) -> LoadedPolicy:
    """Load the trainable policy described by `cfg`.

    Args:
        cfg: the `model:` config section.
        device: where the model will run (decides dtype "auto", 4-bit availability).
        checkpoint: a checkpoint directory of one of our runs (`checkpoints/step_N`): full weights, or a
            LoRA adapter applied on top of the base named by `cfg.path`.

    Returns:
        A `LoadedPolicy` (model in train mode, on CPU unless 4-bit; the caller moves it).

    Raises:
        ConfigError: missing paths, 4-bit without a GPU or bitsandbytes, a LoRA head.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress display; no per-file bars
    device = torch.device(device)
    ckpt = Path(checkpoint) if checkpoint is not None else None
    adapter_ckpt = ckpt is not None and (ckpt / "adapter_config.json").is_file()
    if ckpt is not None and not ckpt.is_dir():
        raise ConfigError(f"checkpoint {str(ckpt)!r} does not exist")
    full_ckpt = str(ckpt) if (ckpt is not None and not adapter_ckpt) else None
    model, tokenizer, source, base_path = _load_base(cfg, device, full_ckpt)
    if cfg.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.lora.enabled:
        if adapter_ckpt:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(ckpt), is_trainable=True)
            source += f" + adapter:{ckpt}"
        else:
            model = _apply_lora(model, cfg.lora)
        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()
    elif adapter_ckpt:
        raise ConfigError(f"checkpoint {str(ckpt)!r} holds a LoRA adapter but model.lora.enabled is false")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.train()
    return LoadedPolicy(model=model, tokenizer=tokenizer, source=source, base_path=base_path)


def load_reference(cfg: ModelConfig, *, device: torch.device | str = "cpu") -> torch.nn.Module | None:
    """A frozen copy of the base weights for the KL penalty, or None when LoRA makes it unnecessary.

    With LoRA the reference is the same model with its adapters disabled (no second copy in memory);
    the trainer uses `peft_model.disable_adapter()` for that. Otherwise the base weights are loaded
    again, set to eval mode and frozen.
    """
    if cfg.lora.enabled:
        return None
    model, _, _, _ = _load_base(cfg, torch.device(device), None)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def count_parameters(config: Any, lora: LoraConfig) -> tuple[int, int]:
    """(trainable, total) parameters of the CausalLM `config` describes, with `lora` applied, counted on
    the meta device (no memory, no weights). Tied weights count once."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
            if lora.enabled:
                model = _apply_lora(model, lora)
    finally:
        hf_logging.set_verbosity(verbosity)
    return num_parameters(model)


def num_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def unwrap_causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The underlying `PreTrainedModel` CausalLM (peft and accelerate/DDP wrappers removed)."""
    m = model
    for _ in range(4):
        if hasattr(m, "module") and isinstance(m.module, torch.nn.Module) and not hasattr(m, "get_output_embeddings"):
            m = m.module
            continue
        if hasattr(m, "get_base_model") and callable(m.get_base_model):
            m = m.get_base_model()
            continue
        break
    return m
