"""Sections that run the trainer (`rlentropy.train.run_training`) on a Qwen2-architecture policy built
here with random weights (no download): about 0.5B parameters on the GPU (Qwen2.5-0.5B's shape,
V = 151,936), a 2-layer model of a few thousand parameters in the dry run.

    trainer     bf16 autocast, full-parameter (float32 master weights) and LoRA (bf16 base): finite
                metrics, no skipped update, and 2 steps straight = 1 step + resume to 2 (weights of
                the final checkpoints, metrics of step 2)
    fused       train.fuse_old_stats true vs false, same seed, 2 steps with 2 mini-batches (LoRA,
                bf16 autocast): the same metrics and weights
    throughput  tokens/s of the rollout and of the update phase (the trainer's time/rollout and
                time/update) at a stated batch, steps after the first
    fourbit     one LoRA step on a 4-bit (NF4) base when bitsandbytes is installed, else SKIP

Tolerances. The CPU claims of docs/training.md are exact (resume: bit-identical weights; fused:
the tests' rel 1e-6), and the dry run holds them to that. On CUDA the same arithmetic is not
bit-reproducible across two processes or two batch shapes (atomics in attention / embedding
backward, other GEMM algorithms for other shapes), so weights are compared in units of the learning
rate: AdamW moves each weight by about lr per step, and rms(W_a - W_b) / lr <= 0.05 says the two runs
agree to 5 % of one optimizer step (a real bug, e.g. a lost optimizer state, gives ~1); metrics to
rel 1e-2 / abs 1e-3 (bf16 autocast forwards of different batch shapes).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from suite_util import Ctx, Recorder, fmt, free_device_memory

TASK = "gpu_suite_parity"
CORE_KEYS = (
    "entropy/mean",
    "entropy/surprisal",
    "entropy/s_mean",
    "entropy/s_bar_mean",
    "loss/total",
    "optim/grad_norm",
    "reward/mean",
    "policy/ratio_mean",
)
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
CHARS = ["\n"] + [chr(c) for c in range(32, 127)]


# ------------------------------------------------------------------------------------------ task


class ParityTask:
    """Prompts 'Q<i>:'; reward 1 when the code points of the completion sum to an even number.

    Random policies then get rewards that vary within each group, so advantages (and gradients) are
    not zero, which a real task (e.g. countdown) would not give a random model.
    """

    name = TASK

    def __init__(self, n_train: int = 512):
        from rlentropy.data import Example

        self.stop_strings: list[str] = []
        self._train = [Example(id=f"t{i}", question=f"Q{i}:", answer="") for i in range(n_train)]
        self._eval = [Example(id=f"e{i}", question=f"E{i}:", answer="") for i in range(16)]

    def train_examples(self) -> list:
        return self._train

    def eval_examples(self) -> list:
        return self._eval

    def render_prompt(self, example: Any, tokenizer: Any) -> str:
        return example.question

    def score(self, completions: list[str], examples: list) -> list[float]:
        return [1.0 if sum(map(ord, c)) % 2 == 0 else 0.0 for c in completions]


def register_parity_task() -> None:
    """Register the task under `TASK` (once per process)."""
    from rlentropy.data import register_task

    try:
        register_task(TASK)(lambda cfg: ParityTask())
    except ValueError:
        pass  # already registered in this process


# ------------------------------------------------------------------------------------------ the model


def model_shape(dry: bool) -> dict[str, int]:
    """Qwen2Config fields: Qwen2.5-0.5B's shape on the GPU (494M parameters), a toy in the dry run."""
    if dry:
        return {
            "vocab_size": 128,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 256,
        }
    return {
        "vocab_size": 151_936,
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
    }


def build_tokenizer(vocab_size: int) -> Any:
    """A character-level WordLevel tokenizer padded with filler tokens '<fN>' up to `vocab_size`.

    Text encodes to one token per character; sampled filler tokens decode to their '<fN>' text.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    names = list(SPECIALS) + CHARS
    names += [f"<f{i}>" for i in range(vocab_size - len(names))]
    vocab = {tok: i for i, tok in enumerate(names)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
        model_max_length=4096,
    )


def build_model(ctx: Ctx, rec: Recorder | None = None) -> Path:
    """Build (once per suite run) a random Qwen2 policy + tokenizer under `<work>/model`, bf16 safetensors."""
    import torch

    out = ctx.work / "model"
    if (out / ".complete").is_file():
        return out
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    shape = model_shape(ctx.dry)
    tok = build_tokenizer(shape["vocab_size"])
    cfg = Qwen2Config(**shape, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device(ctx.device):
        model = Qwen2ForCausalLM(cfg)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = model.to(torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    (out / ".complete").write_text(json.dumps({"parameters": n_params, **shape}))
    del model
    if ctx.device == "cuda":
        torch.cuda.empty_cache()
    if rec is not None:
        rec.info("policy: random Qwen2 (parameters)", n_params, detail=", ".join(f"{k}={v}" for k, v in shape.items()))
    return out


# ------------------------------------------------------------------------------------------ configs and runs


def make_config(
    ctx: Ctx,
    model_dir: Path,
    run_dir: Path,
    *,
    lora: bool,
    steps: int,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Any:
    """A `RunConfig` for `run_training`, written as a YAML file (JSON is YAML) and read with `load_config`."""
    from rlentropy.train import load_config

    dry = ctx.dry
    data: dict[str, Any] = {
        "name": run_dir.name,
        "run_dir": str(run_dir),
        "model": {
            "path": str(model_dir),
            "bf16_autocast": True,
            # full-parameter: float32 master weights under bf16 autocast; LoRA: bf16 base ("auto" on GPU)
            "dtype": "auto" if lora else "float32",
            "lora": {"enabled": lora, "r": 16 if not dry else 4, "alpha": 32 if not dry else 8},
        },
        "data": {"task": TASK},
        "rollout": {"max_new_tokens": 8 if dry else 16, "temperature": 1.0},
        "optim": {"lr": 1e-4 if lora else 1e-5, "weight_decay": 0.0},
        "train": {
            "steps": steps,
            "prompts_per_step": 2 if dry else 4,
            "group_size": 4,
            "seed": 0,
            "device": ctx.device,
        },
        "checkpoint": {"every": 0, "keep_last": 1, "save_final": True},
        "logging": {"tensorboard": False},
    }
    for key, value in (overrides or {}).items():
        data.setdefault(key, {}).update(value)
    path = run_dir.parent / f"{run_dir.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return load_config(path, [])


def train(cfg: Any, *, resume: bool = False, steps: int | None = None) -> list[dict[str, Any]]:
    """`run_training(cfg, resume=...).history`; with `steps` the config is reloaded with
    train.steps=steps. The trainer (model, optimizer state) is dropped and device memory freed."""
    from rlentropy.train import load_config, run_training

    if steps is not None:
        path = Path(cfg.run_dir).parent / f"{Path(cfg.run_dir).name}.yaml"
        cfg = load_config(path, [f"train.steps={steps}"])
    trainer = run_training(cfg, resume=resume, quiet=True)
    history = list(trainer.history)
    del trainer
    free_device_memory(str(cfg.train.device))
    return history


def final_weights(run_dir: Path) -> dict[str, Any]:
    """Every tensor of the newest checkpoint's safetensors files (full model or LoRA adapter)."""
    from safetensors.torch import load_file

    steps = sorted(
        (p for p in (run_dir / "checkpoints").glob("step_*") if p.is_dir()), key=lambda p: int(p.name.split("_")[1])
    )
    if not steps:
        raise FileNotFoundError(f"{run_dir}: no checkpoint")
    out: dict[str, Any] = {}
    for f in sorted(steps[-1].glob("*.safetensors")):
        out.update(load_file(str(f)))
    if not out:
        raise FileNotFoundError(f"{steps[-1]}: no safetensors file")
    return out


def compare_weights(a: dict[str, Any], b: dict[str, Any], lr: float) -> dict[str, Any]:
    """bitwise equality, max |a - b| and rms(a - b), the last two in units of the learning rate."""
    if set(a) != set(b):
        return {"same_keys": False, "bitwise": False, "max_in_lr": math.inf, "rms_in_lr": math.inf, "tensors": len(a)}
    bitwise, max_abs, sq, count = True, 0.0, 0.0, 0
    for k, x in a.items():
        y = b[k]
        if x.shape != y.shape:
            return {
                "same_keys": True,
                "bitwise": False,
                "max_in_lr": math.inf,
                "rms_in_lr": math.inf,
                "tensors": len(a),
            }
        if not x.is_floating_point():
            bitwise = bitwise and bool((x == y).all())
            continue
        eq = bool((x == y).all())
        bitwise = bitwise and eq
        if not eq:
            diff = x.double() - y.double()
            max_abs = max(max_abs, float(diff.abs().max()))
            sq += float((diff * diff).sum())
        count += x.numel()
    return {
        "same_keys": True,
        "bitwise": bitwise,
        "max_in_lr": max_abs / lr,
        "rms_in_lr": math.sqrt(sq / max(count, 1)) / lr,
        "tensors": len(a),
        "elements": count,
    }


def compare_metrics(a: dict[str, Any], b: dict[str, Any], rel: float, abs_: float) -> tuple[float, str]:
    """Worst |a - b| / (abs_ + rel * max(|a|, |b|)) over the shared numeric non-timing keys (<= 1 passes)."""
    worst, where = 0.0, "-"
    keys = sorted(k for k in set(a) | set(b) if not k.startswith("time/") and k != "wall_time")
    for k in keys:
        x, y = a.get(k), b.get(k)
        if isinstance(x, bool) or isinstance(y, bool):
            continue
        if not isinstance(x, (int, float)) or not isinstance(y, (int, float)):
            if (x is None) != (y is None):
                return math.inf, f"{k}: {x} vs {y}"
            continue
        if math.isnan(x) and math.isnan(y):
            continue
        dev = abs(x - y) / (abs_ + rel * max(abs(x), abs(y)))
        if not math.isfinite(dev):
            dev = math.inf
        if dev > worst:
            worst, where = dev, f"{k}: {x:.6g} vs {y:.6g}"
    return worst, where


def tolerances(ctx: Ctx) -> dict[str, float]:
    """Exact on CPU (the documented claims), loose enough for CUDA non-determinism on the GPU."""
    if ctx.device == "cpu":
        return {"w_rms_in_lr": 0.0, "m_rel": 1e-6, "m_abs": 1e-7}
    return {"w_rms_in_lr": 0.05, "m_rel": 1e-2, "m_abs": 1e-3}


def check_finite(rec: Recorder, tag: str, history: list[dict[str, Any]], vocab: int) -> None:
    """Finite core metrics every step, no skipped update; the entropy against log V (information)."""
    bad = [
        f"step {i + 1} {k}={h.get(k)}"
        for i, h in enumerate(history)
        for k in CORE_KEYS
        if not (isinstance(h.get(k), (int, float)) and math.isfinite(h[k]))
    ]
    rec.check(
        f"{tag}: core metrics finite ({len(history)} steps)",
        not bad and len(history) > 0,
        "all finite" if not bad else "; ".join(bad[:4]),
        ", ".join(CORE_KEYS),
        number=float(len(bad)),
    )
    skipped = sum(float(h.get("train/skipped_updates") or 0) for h in history)
    rec.check(f"{tag}: no skipped (non-finite) update", skipped == 0, skipped, "0")
    others = [k for h in history for k, v in h.items() if v is None or (isinstance(v, float) and not math.isfinite(v))]
    rec.info(f"{tag}: other non-finite / null metrics", len(others), ", ".join(sorted(set(others)))[:200])
    if history:
        rec.info(f"{tag}: entropy/mean at step 1 (log V = {math.log(vocab):.3f})", history[0].get("entropy/mean"))


# ------------------------------------------------------------------------------------------ sections


def run_trainer(rec: Recorder, ctx: Ctx) -> None:
    """bf16 autocast full-parameter and LoRA runs: finite metrics and exact resume."""
    register_parity_task()
    model_dir = build_model(ctx, rec)
    vocab = model_shape(ctx.dry)["vocab_size"]
    tol = tolerances(ctx)
    rec.data["tolerances"] = tol
    # LoRA first: cheap, so it finishes even on a slow disk; the full-parameter resume writes three
    # checkpoints of weights + AdamW state (about 6 GB each at 0.5B parameters in float32)
    for lora in (True, False):
        kind = "LoRA" if lora else "full"
        tag = f"trainer {kind} bf16-autocast"
        if rec.over_budget(f"{tag}: all checks", 0.0 if ctx.dry else 20.0):
            continue
        root = ctx.work / f"trainer-{kind}"
        try:
            cfg_a = make_config(ctx, model_dir, root / "straight", lora=lora, steps=2)
            lr = cfg_a.optim.lr
            straight = train(cfg_a)
            rec.data[f"{kind}_history"] = straight
            check_finite(rec, tag, straight, vocab)
            if rec.over_budget(f"{tag}: resume", 0.0 if ctx.dry else (15.0 if lora else 40.0)):
                continue
            cfg_b = make_config(ctx, model_dir, root / "cut", lora=lora, steps=1)
            train(cfg_b)
            resumed = train(cfg_b, resume=True, steps=2)
            w = compare_weights(final_weights(root / "straight"), final_weights(root / "cut"), lr)
            rec.data[f"{kind}_resume_weights"] = w
            ok = w["bitwise"] if tol["w_rms_in_lr"] == 0 else w["rms_in_lr"] <= tol["w_rms_in_lr"]
            rec.check(
                f"{tag}: 2 steps straight = 1 + resume: final weights",
                ok,
                f"bitwise {w['bitwise']}, rms {fmt(w['rms_in_lr'])} lr, max {fmt(w['max_in_lr'])} lr",
                "bitwise" if tol["w_rms_in_lr"] == 0 else f"rms(diff) <= {tol['w_rms_in_lr']} lr",
                f"{w['tensors']} tensors",
                number=w["rms_in_lr"],
            )
            worst, where = compare_metrics(straight[-1], resumed[-1], tol["m_rel"], tol["m_abs"])
            rec.check(
                f"{tag}: resumed step-2 metrics = straight",
                worst <= 1.0 and len(resumed) == 1,
                f"worst {fmt(worst)} ({where})",
                f"rel {tol['m_rel']:g}, abs {tol['m_abs']:g}",
                number=worst,
            )
        except Exception as err:  # noqa: BLE001
            rec.fail(tag, err)
        finally:
            shutil.rmtree(root, ignore_errors=True)


def run_fused(rec: Recorder, ctx: Ctx) -> None:
    """train.fuse_old_stats true vs false with the same seed: metrics and weights agree."""
    register_parity_task()
    model_dir = build_model(ctx, rec)
    tol = tolerances(ctx)
    rec.data["tolerances"] = tol
    root = ctx.work / "fused"
    tag = "fused vs unfused old-policy stats (LoRA, bf16 autocast, 2 mini-batches)"
    try:
        runs = {}
        for fuse in (True, False):
            cfg = make_config(
                ctx,
                model_dir,
                root / f"fuse-{fuse}",
                lora=True,
                steps=2,
                overrides={"train": {"fuse_old_stats": fuse, "mini_batches": 2}},
            )
            runs[fuse] = train(cfg)
            lr = cfg.optim.lr
        worst = 0.0
        where = "-"
        for step, (a, b) in enumerate(zip(runs[True], runs[False], strict=False), start=1):
            dev, at = compare_metrics(a, b, tol["m_rel"], tol["m_abs"])
            if dev > worst:
                worst, where = dev, f"step {step} {at}"
        n_steps = (len(runs[True]), len(runs[False]))
        rec.check(
            f"{tag}: metrics",
            worst <= 1.0 and n_steps == (2, 2),
            f"worst {fmt(worst)} ({where})",
            f"rel {tol['m_rel']:g}, abs {tol['m_abs']:g}",
            number=worst,
        )
        w = compare_weights(final_weights(root / "fuse-True"), final_weights(root / "fuse-False"), lr)
        rec.data["weights"] = w
        # the CPU claim (tests/test_train_fused.py) is rtol 1e-6 / atol 1e-8, i.e. ~1e-4 lr here
        limit = 1e-4 if ctx.device == "cpu" else tol["w_rms_in_lr"]
        rec.check(
            f"{tag}: final adapter weights",
            w["rms_in_lr"] <= limit,
            f"bitwise {w['bitwise']}, rms {fmt(w['rms_in_lr'])} lr, max {fmt(w['max_in_lr'])} lr",
            f"rms(diff) <= {limit:g} lr",
            number=w["rms_in_lr"],
        )
    except Exception as err:  # noqa: BLE001
        rec.fail(tag, err)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_throughput(rec: Recorder, ctx: Ctx) -> None:
    """Rollout and update tokens/s of the full-parameter bf16-autocast policy at a stated batch."""
    import torch

    register_parity_task()
    model_dir = build_model(ctx, rec)
    root = ctx.work / "throughput"
    prompts, group, new_tokens, steps = (2, 4, 8, 2) if ctx.dry else (16, 8, 128, 3)
    batch = f"{prompts} prompts x {group} samples, {new_tokens} new tokens, steps 2..{steps}"
    tag = "throughput full bf16-autocast"
    try:
        cfg = make_config(
            ctx,
            model_dir,
            root / "run",
            lora=False,
            steps=steps,
            overrides={
                "rollout": {"max_new_tokens": new_tokens},
                "train": {"prompts_per_step": prompts, "group_size": group},
                "checkpoint": {"save_final": False},
            },
        )
        if ctx.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        hist = train(cfg)
        timed = hist[1:] if len(hist) > 1 else hist
        rec.data["history"] = hist

        def mean(key: str) -> float:
            vals = [float(h[key]) for h in timed if isinstance(h.get(key), (int, float))]
            return sum(vals) / len(vals) if vals else float("nan")

        seqs = prompts * group
        tokens = mean("response/length_mean") * seqs
        rollout_s, update_s, stats_s, step_s = (
            mean(k) for k in ("time/rollout", "time/update", "time/stats", "time/step")
        )
        rec.info(
            f"{tag}: rollout response tokens/s",
            tokens / rollout_s,
            f"{batch}; {rollout_s:.3g} s/step",
            number=tokens / rollout_s,
        )
        rec.info(
            f"{tag}: update response tokens/s",
            tokens / update_s,
            f"{batch}; {update_s:.3g} s/step",
            number=tokens / update_s,
        )
        rec.info(f"{tag}: step seconds (stats {stats_s:.3g} s)", step_s, f"{tokens:.0f} response tokens/step")
        if ctx.device == "cuda":
            rec.info(f"{tag}: peak CUDA memory GiB", torch.cuda.max_memory_allocated() / 2**30)
    except Exception as err:  # noqa: BLE001
        rec.fail(tag, err)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_fourbit(rec: Recorder, ctx: Ctx) -> None:
    """One LoRA step on an NF4 base (model.load_in_4bit) when bitsandbytes and a GPU are there."""
    import importlib.util

    tag = "4-bit NF4 base + LoRA, 1 step"
    if ctx.device != "cuda":
        rec.skip(tag, "needs CUDA")
        return
    if importlib.util.find_spec("bitsandbytes") is None:
        rec.skip(tag, "bitsandbytes not installed (41 MiB wheel: fetch_wheels.sh --with-4bit)")
        return
    register_parity_task()
    model_dir = build_model(ctx, rec)
    root = ctx.work / "fourbit"
    try:
        cfg = make_config(
            ctx,
            model_dir,
            root / "run",
            lora=True,
            steps=1,
            overrides={"model": {"load_in_4bit": True}, "checkpoint": {"save_final": False}},
        )
        check_finite(rec, tag, train(cfg), model_shape(ctx.dry)["vocab_size"])
    except Exception as err:  # noqa: BLE001
        rec.fail(tag, err)
    finally:
        shutil.rmtree(root, ignore_errors=True)
