"""The documentation runs: every fenced shell block of README.md and docs/*.md is marked, and the CPU ones run.

Markers (the fence's info string; docs/architecture.md, "Docs that run"):

    ```bash cpu        run by this test, top to bottom per page, at toy size (the rewrites below)
    ```bash gpu        needs a GPU: not run; every config it trains must pass `rlentropy check` here
    ```bash setup      installs or sets up the environment (make, pip): not run; make targets must exist
    ```bash external   another tool's command line (verl, a TRL script, a benchmark): not run
    ```python cpu      executed (in the page's workspace) like a shell block
    ```yaml file=NAME  written to NAME in the page's workspace (any language: python, jsonl, ...)

Each page runs in its own temporary directory (configs/, data/ and examples/ linked in), in this process
(one import of torch for the whole test; `rlentropy ...` lines go through `rlentropy.cli.main`), with one
tiny random model (hidden 32, 2 layers, the character tokenizer, context 4,096 so that real math prompts
fit). The toy rewrites, per command:

* `train CONFIG …`: the TOY overrides appended (2 steps, 2 prompts × 2 samples, 4 new tokens, a
  checkpoint every step, eval 2 × 2, CPU, float32); a shipped config (configs/) also gets the tiny model as
  `model.path` (a page's own config keeps its model path; the test puts the tiny model there);
* `train --resume RUN … train.steps=N`: N becomes the run's newest checkpoint + 1 (without `train.steps=`
  as written: a finished toy run says it is finished);
* `eval …`: `--n 2 --max-prompts 2 --max-new-tokens 4` appended; a `RUN/checkpoints/step_N` argument is the
  run's newest checkpoint (toy runs have other step numbers);
* `demo …` / `study …`: the TOY overrides and the tiny model, `--steps 2` (demo), `study.seeds=1`,
  `--seeds N` → at most 2, `--methods grpo,clip_b` unless the command names methods, one worker (in this
  process); a demo or study command whose rewritten form already ran on an earlier page is not run again;
* `pretrain …`: `--steps 2` and a toy recipe appended;
* everything else (`check`, `report`, `methods`, `--help`) as written.

Other commands of a cpu block run with bash in the workspace (`python` is this interpreter).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL = ("bash", "sh", "shell", "console")
MARKERS = ("cpu", "gpu", "setup", "external")
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)
TOY = [
    "train.steps=2",
    "train.prompts_per_step=2",
    "train.group_size=2",
    "train.mini_batches=1",
    "train.micro_batch_size=null",
    "train.stats_batch_size=null",
    "train.device=cpu",
    "rollout.max_new_tokens=4",
    "rollout.batch_size=null",
    "eval.n=2",
    "eval.max_prompts=2",
    "eval.max_new_tokens=4",
    "probes.probe_prompts=1",
    "checkpoint.every=1",
    "logging.tensorboard=false",
    "logging.wandb=false",
    "model.dtype=float32",
    "model.load_in_4bit=false",
]
TOY_EVAL = ["--n", "2", "--max-prompts", "2", "--max-new-tokens", "4"]
TOY_PRETRAIN = ["--steps", "2", "train_size=32", "batch_size=4", "warmup=1", "eval_prompts=2", "eval_samples=2"]
TOY_PRETRAIN += ["max_new_tokens=4"]
TOY_METHODS = "grpo,clip_b"
_RAN: dict[frozenset[str], str] = {}  # rewritten demo / study commands (their words) already run → where


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    flags: set[str]
    attrs: dict[str, str]
    text: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """Every fenced block of a page, with its language, flags (`cpu`) and attributes (`file=NAME`)."""
    text = page.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        words = m.group(1).split()
        lang = words[0] if words else ""
        attrs = dict(w.split("=", 1) for w in words[1:] if "=" in w)
        flags = {w for w in words[1:] if "=" not in w}
        out.append(Block(page, text[: m.start()].count("\n") + 1, lang, flags, attrs, m.group(2)))
    return out


def commands(text: str) -> list[str]:
    """The command lines of a shell block (continuations joined, blank and comment-only lines dropped)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


# ------------------------------------------------------------------------------------------ markers
def test_every_shell_block_is_marked():
    bad = []
    for page in PAGES:
        for b in blocks(page):
            if b.lang in SHELL and len(b.flags & set(MARKERS)) != 1:
                bad.append(f"{b.where}: ```{b.lang} {' '.join(sorted(b.flags))} (mark it {' | '.join(MARKERS)})")
    assert not bad, "\n".join(bad)


def test_setup_blocks_name_existing_make_targets():
    targets = set(re.findall(r"^([A-Za-z][\w-]*):", (REPO / "Makefile").read_text(), re.M))
    missing = []
    for page in PAGES:
        for b in blocks(page):
            if "setup" in b.flags:
                for cmd in commands(b.text):
                    argv = shlex.split(cmd, comments=True)
                    if argv and argv[0] == "make":
                        missing += [f"{b.where}: make {t}" for t in argv[1:] if "=" not in t and t not in targets]
    assert not missing, missing


def test_gpu_blocks_train_configs_that_pass_check():
    from rlentropy.check import check_config

    configs: dict[str, str] = {}
    for page in PAGES:
        for b in blocks(page):
            if "gpu" not in b.flags:
                continue
            for cmd in commands(b.text):
                argv = shlex.split(cmd, comments=True)
                for i, tok in enumerate(argv[:-1]):
                    if tok == "train" and argv[i + 1].endswith(".yaml"):
                        configs.setdefault(argv[i + 1], b.where)
    assert configs, "no gpu block trains a config"
    for config, where in configs.items():
        report = check_config(REPO / config)
        assert report.exit_code == 0, f"{where}: rlentropy check {config}\n{report.text()}"


# ------------------------------------------------------------------------------------------ running
@dataclass
class Workspace:
    root: Path
    tiny: Path
    log: list[str] = field(default_factory=list)
    own_configs: set[str] = field(default_factory=set)


def _newest_checkpoint(run: Path) -> Path | None:
    from rlentropy.runs.checkpoints import latest_checkpoint

    found = latest_checkpoint(run)
    return found[1] if found else None


def _option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv[:-1] else None


def _cap_seeds(argv: list[str]) -> list[str]:
    if "--seeds" in argv[:-1]:
        i = argv.index("--seeds") + 1
        argv = [*argv[:i], str(min(int(argv[i]), 2)), *argv[i + 1 :]]
    return argv


def rewrite(argv: list[str], ws: Workspace) -> list[str]:
    """The toy version of `rlentropy <argv>` (see the module docstring)."""
    if not argv or argv[0].startswith("-"):
        return argv
    sub, rest = argv[0], argv[1:]
    model = [f"model.path={ws.tiny}"]
    if sub == "train" and "--resume" in rest:
        if not any(a.startswith("train.steps=") for a in rest):
            return argv  # resumes as written (a finished toy run says so)
        newest = _newest_checkpoint(Path(_option(rest, "--resume") or ""))
        step = int(newest.name.split("_")[1]) if newest is not None else 0
        return ["train", *[a for a in rest if not a.startswith("train.steps=")], f"train.steps={step + 1}"]
    if sub == "train":
        config = rest[0]
        own = config in ws.own_configs
        return ["train", *rest, *TOY, *([] if own else model)]
    if sub == "eval":
        fixed = []
        for a in rest:
            m = re.match(r"^(.*)/checkpoints/step_\d+/?$", a)
            newest = _newest_checkpoint(Path(m.group(1))) if m else None
            fixed.append(str(newest) if newest is not None else a)
        return ["eval", *fixed, *TOY_EVAL]
    if sub in ("demo", "study"):
        study = _option(rest, "--study")
        extra = [*TOY[1:], *model, "study.seeds=1"]
        if sub == "demo":
            extra += ["--steps", "2"]
        else:
            extra += ["train.steps=2", "--workers", "1"]
        if "--methods" not in rest and study != "quadrants":
            extra += ["--methods", TOY_METHODS]
        return [sub, *_cap_seeds(rest), *extra]
    if sub == "pretrain":
        return ["pretrain", *rest, *TOY_PRETRAIN]
    return argv


def _rlentropy(argv: list[str], where: str, ws: Workspace, capsys: pytest.CaptureFixture) -> None:
    from rlentropy.cli import main

    toy = rewrite(argv, ws)
    if toy[0] in ("demo", "study"):
        out = _option(toy, "--out")
        key = frozenset(a for a in toy if a not in ("--out", "--quiet", out))
        if key in _RAN:
            ws.log.append(f"{where}: rlentropy {shlex.join(argv)}: ran already ({_RAN[key]})")
            return
        _RAN[key] = where
    t0 = time.perf_counter()
    code = 0
    try:
        main(toy)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    ws.log.append(f"{where}: rlentropy {shlex.join(argv)} ({time.perf_counter() - t0:.1f} s)")
    assert code == 0, f"{where}: `rlentropy {shlex.join(argv)}` exited {code}\nas run: {toy}\n{out.out}\n{out.err}"


def _shell(cmd: str, where: str, ws: Workspace) -> None:
    bin_dir = ws.root / ".bin"
    bin_dir.mkdir(exist_ok=True)
    if not (bin_dir / "python").exists():
        (bin_dir / "python").symlink_to(sys.executable)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(["bash", "-c", cmd], cwd=ws.root, env=env, capture_output=True, text=True, timeout=300)
    ws.log.append(f"{where}: {cmd}")
    assert proc.returncode == 0, f"{where}: `{cmd}` exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def _write_file(b: Block, ws: Workspace) -> None:
    path = ws.root / b.attrs["file"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(b.text, encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        from rlentropy.runs.config import yaml_load

        ws.own_configs.add(b.attrs["file"])
        model = ((yaml_load(b.text) or {}).get("model") or {}).get("path")
        target = ws.root / model if isinstance(model, str) and not Path(model).is_absolute() else None
        if target is not None and not target.exists() and model not in ("tiny",):
            target.symlink_to(ws.tiny, target_is_directory=True)  # "your model": the tiny one here
    if path.suffix == ".jsonl" and b.attrs.get("rows"):  # the test writes more rows of the page's kind
        _grow_jsonl(path, int(b.attrs["rows"]))


def _grow_jsonl(path: Path, rows: int) -> None:
    """Append rows shaped like the page's own (same keys; string values made from the row number)."""
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    keys = list(lines[0])
    with open(path, "a", encoding="utf-8") as fh:
        for i in range(len(lines), rows):
            word = "".join("abcdefgh"[(i >> k) % 8] for k in range(0, 9, 3))
            row = {k: (f"Reverse: {word}" if j == 0 else word[::-1]) for j, k in enumerate(keys)}
            fh.write(json.dumps(row) + "\n")


def run_page(page: Path, ws: Workspace, capsys: pytest.CaptureFixture) -> None:
    for b in blocks(page):
        if "file" in b.attrs:
            _write_file(b, ws)
        elif b.lang == "python" and "cpu" in b.flags:
            code = compile(b.text, b.where, "exec")
            exec(code, {"__name__": "__docs__"})  # noqa: S102 - the page's own snippet, run as documented
            ws.log.append(f"{b.where}: python block")
        elif b.lang in SHELL and "cpu" in b.flags:
            for cmd in commands(b.text):
                argv = shlex.split(cmd, comments=True)
                if argv and argv[0] in ("rlentropy", ".venv/bin/rlentropy"):
                    _rlentropy(argv[1:], b.where, ws, capsys)
                elif argv[:3] == [argv[0], "-m", "rlentropy.cli"] and argv[0].startswith("python"):
                    _rlentropy(argv[3:], b.where, ws, capsys)
                else:
                    _shell(cmd, b.where, ws)


def _runnable(page: Path) -> bool:
    return any("cpu" in b.flags or "file" in b.attrs for b in blocks(page))


@pytest.fixture(scope="module")
def docs_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random model of conftest.py with a 4,096-token context (real math prompts fit, char by char)
    and a chat template."""
    from rlentropy.models.tiny import make_random_tiny_policy

    out = tmp_path_factory.mktemp("docs-model")
    model, tok = make_random_tiny_policy(seed=0, hidden=32, layers=2, max_position_embeddings=4096)
    tok.model_max_length = 4096
    # a chat template, so that configs with data.template chat / raw_chat / dapo run on it too
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.mark.docs
@pytest.mark.parametrize("page", [p for p in PAGES if _runnable(p)], ids=lambda p: str(p.relative_to(REPO)))
def test_page_runs_top_to_bottom(page, docs_model, tmp_path, monkeypatch, capsys, restore_registries):
    for name in ("configs", "data", "examples"):
        (tmp_path / name).symlink_to(REPO / name, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    for var, value in (("RLENTROPY_DEMO_WORKERS", "1"), ("RLENTROPY_STUDY_WORKERS", "1"), ("HF_HUB_OFFLINE", "1")):
        monkeypatch.setenv(var, value)
    ws = Workspace(tmp_path, docs_model)
    t0 = time.perf_counter()
    run_page(page, ws, capsys)
    with capsys.disabled():
        print(f"\n{page.relative_to(REPO)}: {time.perf_counter() - t0:.0f} s\n  " + "\n  ".join(ws.log))


def test_your_own_page_runs_every_block():
    # the newcomer's page: every snippet on it is written or run by test_page_runs_top_to_bottom
    idle = [b.where for b in blocks(REPO / "docs" / "your_own.md") if "cpu" not in b.flags and "file" not in b.attrs]
    assert not idle, idle


def test_no_reference_to_the_internal_design_file():
    # an internal design file, never in the repository, that the docs used to cite: every reference is gone
    name = "ALGORITHMS" + ".md"
    roots = [REPO / "README.md", REPO / "docs", REPO / "src", REPO / "tests", REPO / "configs", REPO / "benchmarks"]
    files = [p for r in roots for p in ([r] if r.is_file() else r.rglob("*")) if p.suffix in (".md", ".py", ".yaml")]
    hits = [
        f"{p.relative_to(REPO)}:{i}"
        for p in files
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if name in line
    ]
    assert not hits, hits


@pytest.mark.skipif(shutil.which("make") is None, reason="no make here")
def test_make_lets_the_user_choose_the_torch_wheel_index():
    def dry_run(*args: str) -> str:
        cmd = ["make", "-n", "-B", "venv", *args]
        return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60).stdout

    cpu = "https://download.pytorch.org/whl/cpu"
    assert f"pip install -q --index-url {cpu} torch==2.13.0" in dry_run(f"TORCH_INDEX={cpu}")
    assert "pip install -q torch==2.13.0\n" in dry_run()  # the default is unchanged: pip's configured index
    assert "torch==2.12.0" in dry_run("TORCH_VERSION=2.12.0")
