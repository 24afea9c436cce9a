"""The checks of `rlentropy check` (see the package docstring): OK / WARN / FAIL / INFO lines.

A FAIL is what would stop `rlentropy train CONFIG` on this machine for a reason in the config or the data
(a bad key, a missing file, an over-long prompt with `data.over_long=error`, a bad method parameter); a
WARN is what this machine lacks or cannot see (no GPU for a GPU config, a hub model not in the local
cache, bitsandbytes not installed) or what the run would do that one may not expect (prompts skipped, a
run directory in use); INFO lines say what would run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlentropy.data import build_task
from rlentropy.data.lengths import check_prompt_lengths, prompt_token_limit
from rlentropy.errors import UserError
from rlentropy.models.loading import ModelInspection, context_length, count_parameters, inspect_model
from rlentropy.runs import checkpoints as ckpt_io
from rlentropy.runs.config import RunConfig, load_config
from rlentropy.runs.plugins import REGISTERED
from rlentropy.train.methods import MethodSet

LEVELS = ("OK", "WARN", "FAIL", "INFO")
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
PROMPT_SAMPLE = 64
"""Train prompts tokenised to estimate the prompt tokens per step."""


@dataclass
class Line:
    """One line of the report: level (OK, WARN, FAIL, INFO), topic, text."""

    level: str
    topic: str
    text: str

    def __str__(self) -> str:
        return f"{self.level:<4}  {self.topic:<11} {self.text}"


@dataclass
class CheckReport:
    """The lines of one check, in order, and what the later checks need from the earlier ones."""

    lines: list[Line] = field(default_factory=list)
    cfg: RunConfig | None = None
    model: ModelInspection | None = None
    params: tuple[int, int] | None = None  # (trainable, total)
    device: str = "cpu"
    dtype: str = "float32"
    prompt_tokens: float | None = None  # mean over a sample of train prompts
    train_examples: int | None = None

    def add(self, level: str, topic: str, text: str) -> None:
        self.lines.append(Line(level, topic, text))

    def count(self, level: str) -> int:
        return sum(1 for line in self.lines if line.level == level)

    @property
    def exit_code(self) -> int:
        """2 when any line is FAIL, else 0."""
        return 2 if self.count("FAIL") else 0

    def summary(self) -> str:
        counts = ", ".join(f"{self.count(level)} {level}" for level in ("OK", "WARN", "FAIL"))
        if self.count("FAIL"):
            return f"check: {counts}: `rlentropy train` would stop; fix the FAIL lines"
        if self.count("WARN"):
            return f"check: {counts}: the config is valid; read the WARN lines before you train on this machine"
        return f"check: {counts}: `rlentropy train` would run as above"

    def text(self) -> str:
        return "\n".join([*(str(line) for line in self.lines), self.summary()])

    @contextmanager
    def section(self, topic: str) -> Iterator[None]:
        """A user error inside the block becomes one FAIL line of `topic` (the later checks go on)."""
        try:
            yield
        except UserError as err:
            self.add("FAIL", topic, str(err))


def _n(x: float) -> str:
    return f"{int(x):,}"


def _size(n_bytes: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{int(n_bytes)} B"


def _params_text(n: int) -> str:
    """ "865,920" or "136,957,248 (136.96M)"."""
    if n >= 10**9:
        return f"{_n(n)} ({n / 1e9:.2f}B)"
    if n >= 10**6:
        return f"{_n(n)} ({n / 1e6:.2f}M)"
    return _n(n)


# ---------------------------------------------------------------------------------------------- checks
def _check_config(r: CheckReport, path: Path, overrides: Sequence[str]) -> None:
    with r.section("config"):
        cfg = load_config(path, list(overrides))
        r.cfg = cfg
        extra = f" with {len(overrides)} override{'s' if len(overrides) != 1 else ''}" if overrides else ""
        r.add("OK", "config", f"{path}{extra}: every key valid (name {cfg.name}, run_dir {cfg.resolved_run_dir()})")
        for plugin in cfg.plugins:
            what = ", ".join(REGISTERED.get(plugin, [])) or "nothing new (imported before)"
            r.add("OK", "plugins", f"{plugin}: imported; registered {what}")


def _check_model(r: CheckReport) -> None:
    cfg = r.cfg
    assert cfg is not None
    m = cfg.model
    with r.section("model"):
        ins = inspect_model(m)
        r.model = ins
        if not ins.cached:
            if m.allow_download:
                r.add(
                    "WARN",
                    "model",
                    f"hub model {ins.location!r} is not in the local Hugging Face cache: `rlentropy "
                    "train` would download it (model.allow_download is true)",
                )
            else:
                r.add(
                    "WARN",
                    "model",
                    f"hub model {ins.location!r} is not in the local Hugging Face cache and "
                    "model.allow_download is false: `rlentropy train` would stop here. Cache it first "
                    f"(`huggingface-cli download {ins.location}`) or set model.allow_download=true",
                )
            r.add(
                "WARN",
                "model",
                "its size and the prompt lengths are not checked without its config and tokenizer "
                f"(`huggingface-cli download {ins.location} config.json tokenizer.json tokenizer_config.json` "
                "is enough for check)",
            )
            return
        what = {"shipped": "the shipped tiny policy", "local": "local directory", "gguf": "GGUF", "hub": "cached hub"}
        ctx = context_length(ins.config)
        arch = getattr(ins.config, "model_type", "?")
        vocab = getattr(ins.config.get_text_config(), "vocab_size", None)
        if ins.kind in ("shipped", "local") and not ins.weights:
            r.add("FAIL", "model", f"{ins.location}: no weight files (model.safetensors, *.bin, an index)")
            return
        r.add(
            "OK",
            "model",
            f"{what[ins.kind]} {ins.location}: {arch}, context {_n(ctx) if ctx else 'unknown'} tokens, "
            f"vocabulary {_n(vocab) if vocab else '?'} (config and tokenizer read; weights not loaded)",
        )
        trainable, total = count_parameters(ins.config, m.lora)
        r.params = (trainable, total)
        how = f"LoRA r {m.lora.r} on {m.lora.target_modules}" if m.lora.enabled else "full-parameter"
        r.add("OK", "parameters", f"{_params_text(total)} total, {_params_text(trainable)} trainable ({how})")


def _check_device(r: CheckReport) -> None:
    cfg = r.cfg
    assert cfg is not None
    has_gpu = torch.cuda.is_available()
    want, m = cfg.train.device, cfg.model
    before = r.count("WARN") + r.count("FAIL")
    r.device = "cuda" if want == "cuda" or (want == "auto" and has_gpu) else "cpu"
    r.dtype = m.dtype if m.dtype != "auto" else ("bfloat16" if r.device == "cuda" else "float32")
    here = f"this machine has {torch.cuda.device_count()} CUDA GPU(s)" if has_gpu else "this machine has no CUDA GPU"
    if want == "cuda" and not has_gpu:
        r.add(
            "WARN",
            "device",
            f"train.device is cuda and {here}: the config is for a GPU machine (`rlentropy "
            "train` would stop here with 'no CUDA GPU is available')",
        )
    if m.load_in_4bit and not m.lora.enabled:
        r.add(
            "FAIL", "device", "model.load_in_4bit: a 4-bit base cannot be trained directly; set model.lora.enabled=true"
        )
    elif m.load_in_4bit:
        try:
            import bitsandbytes  # noqa: F401

            bnb = True
        except ImportError:
            bnb = False
        if not bnb or r.device != "cuda":
            need = [x for x, ok in (("a CUDA GPU", r.device == "cuda" and has_gpu), ("bitsandbytes", bnb)) if not ok]
            r.add(
                "WARN",
                "device",
                f"model.load_in_4bit needs {' and '.join(need)}, missing here "
                "(pip install bitsandbytes on the GPU machine)",
            )
    if cfg.train.distributed == "fsdp":
        r.add("INFO", "device", "train.distributed fsdp: shards only with several processes (accelerate launch)")
    threads = cfg.train.threads if cfg.train.threads != "auto" else ("1" if r.device == "cpu" else "torch's default")
    autocast = ", bf16 autocast" if r.device == "cuda" and m.bf16_autocast else ""
    level = "OK" if r.count("WARN") + r.count("FAIL") == before else "INFO"  # what it would use, warned above
    r.add(
        level,
        "device",
        f"{r.device} (train.device {want}; {here}), parameters in {r.dtype}{autocast}, {threads} thread(s)",
    )


def _check_data(r: CheckReport) -> None:
    cfg = r.cfg
    assert cfg is not None
    with r.section("data"):
        task = build_task(cfg.data)
        train, evals = task.train_examples(), task.eval_examples()
        r.train_examples = len(train)
        reports = list(getattr(task, "load_reports", []) or [])
        skipped = sum(rep.skipped for rep in reports)
        read = f"; {_n(sum(rep.rows for rep in reports))} rows read" if reports else ""
        bad = (
            f", {_n(skipped)} bad rows skipped (data.skip_bad_rows; the first: {_first_reason(reports)})"
            if skipped
            else ""
        )
        reward = f"; reward {cfg.data.reward}" if cfg.data.reward else ""
        r.add(
            "OK",
            "data",
            f"task {cfg.data.task}: {_n(len(train))} train / {_n(len(evals))} eval examples{read}{bad}{reward}",
        )
        splits: list[tuple[str, Any, list, int]] = [
            ("train", task, train, cfg.rollout.max_new_tokens),
            ("eval", task, evals, cfg.rollout.max_new_tokens),
        ]
        if cfg.eval.every or cfg.eval.at_end:
            ev_task = build_task(cfg.data, for_eval=True)
            ev = ev_task.eval_examples()
            new = cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens
            if cfg.data.eval_task:
                r.add("OK", "data", f"eval task {cfg.data.eval_task}: {_n(len(ev))} examples")
            splits.append(("evaluation", ev_task, ev, new))
        _check_prompts(r, splits, task, train)


def _first_reason(reports: list[Any]) -> str:
    return next((rep.reasons[0] for rep in reports if rep.reasons), "?")


def _check_prompts(r: CheckReport, splits: list[tuple[str, Any, list, int]], task: Any, train: list) -> None:
    cfg, ins = r.cfg, r.model
    assert cfg is not None
    if ins is None or ins.tokenizer is None:
        r.add("WARN", "prompts", "prompt lengths not checked: no tokenizer (see the model lines)")
        return
    context = context_length(ins.config)
    with r.section("prompts"):
        parts = []
        for split, t, examples, new in splits:
            limit = prompt_token_limit(cfg.data, context=context, max_new_tokens=new)
            _kept, rep = check_prompt_lengths(examples, t, ins.tokenizer, limit=limit, policy="skip", split=split)
            if limit is None:
                parts.append(f"{split}: no limit (the model declares no context and data.max_prompt_tokens is null)")
            elif rep.skipped and cfg.data.over_long == "error":
                r.add(
                    "FAIL",
                    "prompts",
                    f"{_n(rep.skipped)} of {_n(rep.checked)} {split} prompts are longer than "
                    f"{_n(limit)} tokens: `rlentropy train` would stop at the first ({rep.examples[0]}); shorten "
                    "them, raise data.max_prompt_tokens within the context, or set data.over_long=skip",
                )
            elif rep.skipped:
                r.add(
                    "WARN",
                    "prompts",
                    f"{_n(rep.skipped)} of {_n(rep.checked)} {split} prompts are longer than "
                    f"{_n(limit)} tokens and would be skipped (data.over_long=skip); the first: {rep.examples[0]}",
                )
            else:
                parts.append(f"{_n(rep.checked)} {split} ≤ {_n(limit)}")
        if parts:
            ctx = f"context {_n(context)}" if context else "no context declared"
            r.add("OK", "prompts", "every prompt fits, in tokens: " + "; ".join(parts) + f" ({ctx})")
        sample = [task.render_prompt(ex, ins.tokenizer) for ex in train[:PROMPT_SAMPLE]]
        if sample:
            r.prompt_tokens = sum(len(ins.tokenizer(p)["input_ids"]) for p in sample) / len(sample)


def _check_methods(r: CheckReport) -> None:
    cfg = r.cfg
    assert cfg is not None
    a = cfg.algorithm
    with r.section("methods"):
        methods = MethodSet.from_config(a)
        methods.validate(group_size=cfg.train.group_size)
        controls = ", ".join(c.spec.name for c in methods.controls) or "none"
        params = ", ".join(f"{k} {v}" for k, v in a.loss_params.items())
        controller = f", controller {a.controller}" if a.controller != "none" else ""
        kl = f", KL {a.kl.estimator} × {a.kl.coef:g}" if a.kl.coef else ""
        r.add(
            "OK",
            "methods",
            f"advantage {a.advantage}, loss {a.loss}{f' ({params})' if params else ''}, aggregation {a.aggregation}, "
            f"controls {controls}{controller}{kl}: names and parameters valid, each ran on a dummy batch",
        )
        if cfg.train.group_size == 1 and a.advantage in ("grpo", "dr_grpo", "rloo"):
            r.add("WARN", "methods", f"train.group_size 1: every group-relative advantage of {a.advantage} is 0")


def _check_run_dir(r: CheckReport) -> None:
    cfg = r.cfg
    assert cfg is not None
    run_dir = cfg.resolved_run_dir()
    if run_dir.exists() and (ckpt_io.list_checkpoints(run_dir) or (run_dir / "metrics.jsonl").exists()):
        r.add(
            "WARN",
            "run_dir",
            f"{run_dir} already holds a run: `rlentropy train` would stop; continue it with "
            f"`rlentropy train --resume {run_dir}`, or set another name= / run_dir=",
        )
    else:
        r.add("OK", "run_dir", f"{run_dir} (a new run)")


# ------------------------------------------------------------------------------------------ the plan
def _plan(r: CheckReport) -> None:
    cfg = r.cfg
    assert cfg is not None
    t, ro = cfg.train, cfg.rollout
    seqs = t.prompts_per_step * t.group_size
    resp = seqs * ro.max_new_tokens
    prompt = f" + ≈ {_n(seqs * r.prompt_tokens)} prompt tokens" if r.prompt_tokens is not None else ""
    passes = (
        f"; {t.steps * t.prompts_per_step / r.train_examples:.3g} passes over the train prompts"
        if r.train_examples
        else ""
    )
    r.add(
        "INFO",
        "plan",
        f"{_n(t.steps)} steps × {t.prompts_per_step} prompts × {t.group_size} samples = {_n(seqs)} "
        f"sequences per step: ≤ {_n(resp)} response tokens ({ro.max_new_tokens} each){prompt}; {t.mini_batches} "
        f"mini-batch(es) × {t.ppo_epochs} epoch(s) = {t.mini_batches * t.ppo_epochs} optimizer steps per step{passes}",
    )
    c = cfg.checkpoint
    written = (t.steps // c.every if c.every else 0) + (1 if c.save_final and (not c.every or t.steps % c.every) else 0)
    size = ""
    if r.params is not None:
        trainable, total = r.params
        per = BYTES[r.dtype] * (trainable if cfg.model.lora.enabled else total) + 2 * BYTES[r.dtype] * trainable
        size = f", each ≈ {_size(per)} ({'adapter' if cfg.model.lora.enabled else 'model'} weights + AdamW state)"
    every = f"every {c.every} steps" + (" and at the end" if c.save_final else "") if c.every else "at the end only"
    if not c.every and not c.save_final:
        every = "none (checkpoint.every 0, save_final false: `rlentropy eval` would have nothing to evaluate)"
    r.add("INFO", "checkpoints", f"{every}: {written} written, the newest {min(c.keep_last, written)} kept{size}")
    e = cfg.eval
    if e.every or e.at_end:
        when = (f"every {e.every} steps" if e.every else "") + (" and " if e.every and e.at_end else "")
        when += "at the end" if e.at_end else ""
        prompts = f"the first {e.max_prompts}" if e.max_prompts else "all"
        r.add("INFO", "eval", f"{when}: {prompts} eval prompts × {e.n} samples at T {e.temperature:g}")
    else:
        r.add("INFO", "eval", "none during training (eval.every 0, eval.at_end false); `rlentropy eval` afterwards")
    p = cfg.probes
    r.add("INFO", "probes", f"every {p.every} steps (steps {p.every}, {2 * p.every}, …)" if p.every else "off")


def _memory(r: CheckReport) -> None:
    cfg = r.cfg
    assert cfg is not None
    if r.params is None:
        r.add("INFO", "memory", "not estimated (the model's size is unknown)")
        return
    trainable, total = r.params
    b = BYTES[r.dtype]
    frozen = total - trainable
    weights = trainable * b + frozen * (0.5 if cfg.model.load_in_4bit else b)
    grads, adam = trainable * b, 2 * trainable * b
    ref = total * b if (cfg.algorithm.kl.coef > 0 and not cfg.model.lora.enabled) else 0
    total_bytes = weights + grads + adam + ref
    nf4 = " (base in 4-bit NF4 ≈ 0.5 B/parameter)" if cfg.model.load_in_4bit else ""
    refs = f" + reference model {_size(ref)} (KL without LoRA)" if ref else ""
    line = (
        f"weights {_size(weights)}{nf4} + gradients {_size(grads)} + AdamW states {_size(adam)}{refs} = "
        f"{_size(total_bytes)} in {r.dtype} per process; activations, the KV cache and the statistics "
        "workspace come on top"
    )
    r.add("INFO", "memory", line)
    have = _device_memory(r.device)
    if have is not None and total_bytes > have:
        r.add("WARN", "memory", f"that is more than this machine's {r.device} memory ({_size(have)})")


def _device_memory(device: str) -> int | None:
    if device == "cuda":
        if not torch.cuda.is_available():
            return None
        return int(torch.cuda.get_device_properties(0).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


# ------------------------------------------------------------------------------------------- entry
def check_config(path: str | Path, overrides: Sequence[str] = ()) -> CheckReport:
    """Every check of a config (and its overrides), in order; nothing is trained or written."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    r = CheckReport()
    path = Path(path)
    _check_config(r, path, overrides)
    if r.cfg is None:
        return r
    _check_model(r)
    _check_device(r)
    _check_data(r)
    _check_methods(r)
    _check_run_dir(r)
    _plan(r)
    _memory(r)
    return r


def check_command(config: Path, overrides: Sequence[str], out: Callable[[str], None] = print) -> int:
    """CLI body of `rlentropy check`: print the report; the exit status (2 on any FAIL)."""
    report = check_config(config, overrides)
    out(report.text())
    return report.exit_code
