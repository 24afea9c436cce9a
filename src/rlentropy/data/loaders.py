"""Dataset loaders: the bundled math datasets, any jsonl / parquet file, Hugging Face `datasets`.

Bundled data lives in the repository's `data/` folder (GSM8K, MATH-500, AIME 2024, AIME 2025,
AMC 2023, DAPO-Math-17k; each with its SOURCE.md and licence). The package finds it relative to
the source checkout (`src/rlentropy/data/loaders.py` → `<repo>/data`), which is where an editable
install (`pip install -e .`, `make venv`) runs from; set `RLENTROPY_DATA_DIR` to use another copy.

Every loader returns `Example`s with a normalised gold answer:
    gsm8k   text after "####", commas removed          ("1,000" → "1000")
    aime    str(int(answer))                           ("025" → "25")
    amc23   int when integral, else the float's repr   (27.0 → "27")
    math500 the LaTeX answer as given
    dapo    reward_model.ground_truth
Bad input raises `DataError` naming the file and line (or row), unless `skip_bad_rows` is set, in
which case the bad rows are counted in the returned `LoadReport`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlentropy.data.tasks import Example
from rlentropy.errors import DataError
from rlentropy.rewards.extract import extract_boxed, extract_gsm8k

_MARKER = Path("gsm8k") / "SOURCE.md"


def data_dir() -> Path:
    """The folder holding the bundled datasets (`$RLENTROPY_DATA_DIR` or `<repo>/data`)."""
    env = os.environ.get("RLENTROPY_DATA_DIR")
    cand = Path(env) if env else Path(__file__).resolve().parents[3] / "data"
    if not (cand / _MARKER).is_file():
        raise DataError(
            f"bundled datasets not found in {cand}: run from a source checkout installed with "
            "`pip install -e .` (the data/ folder sits next to src/), or set RLENTROPY_DATA_DIR"
        )
    return cand


@dataclass
class LoadReport:
    """What a loader did: rows read, rows skipped (with the first reasons)."""

    path: str
    rows: int = 0
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)

    def skip(self, reason: str) -> None:
        self.skipped += 1
        if len(self.reasons) < 10:
            self.reasons.append(reason)


# ---------------------------------------------------------------------------------------------
# Reading rows
# ---------------------------------------------------------------------------------------------
def read_rows(path: str | Path, *, report: LoadReport | None = None) -> Iterator[tuple[int, dict]]:
    """Yield `(line_or_row_number, row_dict)` from a .jsonl / .json / .parquet file.

    Numbers are 1-based lines for JSON Lines and 1-based rows for parquet. A line that is not a
    JSON object raises DataError naming the file and line, or is counted in `report` when one is
    given (`skip_bad_rows`). A file that is not UTF-8 raises DataError whatever `report` says.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such dataset file")
    suffix = "".join(p.suffixes[-1:]).lower()
    if suffix == ".parquet":
        yield from _read_parquet(p)
        return
    if suffix not in (".jsonl", ".json"):
        raise DataError(f"{p}: unsupported dataset format {suffix!r}; use .jsonl or .parquet")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{p}:{line}: file is not valid UTF-8 (byte {exc.start}: {raw[exc.start : exc.start + 1]!r}); "
            "re-encode it as UTF-8"
        ) from None
    if suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{p}:{exc.lineno}: invalid JSON ({exc.msg})") from None
        for i, row in enumerate(rows, 1):
            if not isinstance(row, dict):
                _bad(p, i, "row is not a JSON object", report)
                continue
            yield i, row
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            _bad(p, lineno, f"invalid JSON ({exc.msg})", report)
            continue
        if not isinstance(row, dict):
            _bad(p, lineno, "line is not a JSON object", report)
            continue
        yield lineno, row


def _bad(p: Path, n: int, msg: str, report: LoadReport | None) -> None:
    if report is None:
        raise DataError(f"{p}:{n}: {msg} (set data.skip_bad_rows=true to skip such rows)")
    report.skip(f"{p}:{n}: {msg}")


def _read_parquet(p: Path) -> Iterator[tuple[int, dict]]:
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(p)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a broken file
        raise DataError(f"{p}: cannot read parquet ({type(exc).__name__}: {exc})") from None
    yield from enumerate(table.to_pylist(), 1)


def get_field(row: Any, path: str) -> Any:
    """`row["a"]["b"][0]["c"]` for path "a.b.0.c"; raises KeyError naming the missing part."""
    cur = row
    for part in path.split("."):
        if isinstance(cur, dict):
            if part not in cur:
                raise KeyError(part)
            cur = cur[part]
        elif isinstance(cur, (list, tuple)) and part.lstrip("-").isdigit():
            idx = int(part)
            if not -len(cur) <= idx < len(cur):
                raise KeyError(part)
            cur = cur[idx]
        else:
            raise KeyError(part)
    return cur


# ---------------------------------------------------------------------------------------------
# Gold-answer normalisation
# ---------------------------------------------------------------------------------------------
def _norm_raw(v: Any) -> str:
    if isinstance(v, bool):
        raise ValueError("a boolean is not an answer")
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        s = v.strip()
        if not s:
            raise ValueError("empty answer")
        return s
    raise ValueError(f"answer has type {type(v).__name__}")


def _norm_gsm8k(v: Any) -> str:
    if not isinstance(v, str) or "####" not in v:
        raise ValueError("no '####' in the answer")
    ans = extract_gsm8k(v)
    if ans is None:
        raise ValueError("empty answer after '####'")
    return ans


def _norm_boxed(v: Any) -> str:
    ans = extract_boxed(str(v))
    if ans is None:
        raise ValueError("no \\boxed{} in the answer")
    return ans


def _norm_int(v: Any) -> str:
    s = _norm_raw(v)
    try:
        return str(int(float(s))) if float(s).is_integer() else s
    except ValueError:
        return s


ANSWER_FORMATS: dict[str, Callable[[Any], str]] = {
    "raw": _norm_raw,
    "gsm8k": _norm_gsm8k,
    "boxed": _norm_boxed,
    "int": _norm_int,
}


# ---------------------------------------------------------------------------------------------
# Rows → examples
# ---------------------------------------------------------------------------------------------
def rows_to_examples(
    rows: Iterator[tuple[int, dict]] | Sequence[tuple[int, dict]],
    *,
    source: str,
    question_field: str = "question",
    answer_field: str = "answer",
    id_field: str | None = None,
    answer_format: str = "raw",
    id_prefix: str = "",
    unwrap: Callable[[str], str] | None = None,
    meta_fields: Sequence[str] = (),
    report: LoadReport | None = None,
) -> list[Example]:
    """Build examples from rows, naming `source:line` in every error.

    Args:
        rows: `(line_number, row)` pairs (`read_rows`).
        source: file name or dataset id used in messages.
        question_field / answer_field / id_field: dotted field paths ("prompt.0.content").
        answer_format: "raw", "int", "gsm8k" (text after ####) or "boxed" (last \\boxed{}).
        id_prefix: prefix of generated ids (`<prefix><id or line>`).
        unwrap: applied to the question text (e.g. `dapo_unwrap`).
        meta_fields: fields copied into `Example.meta` when present.
        report: when given, bad rows are counted there instead of raising (skip_bad_rows).
    """
    if answer_format not in ANSWER_FORMATS:
        raise DataError(
            f"data.params.answer_format: unknown format {answer_format!r}; allowed: {', '.join(ANSWER_FORMATS)}"
        )
    norm = ANSWER_FORMATS[answer_format]
    out: list[Example] = []
    for n, row in rows:
        if report is not None:
            report.rows += 1
        try:
            q = get_field(row, question_field)
        except KeyError:
            _bad_field(source, n, question_field, "question_field", report)
            continue
        try:
            a = get_field(row, answer_field)
        except KeyError:
            _bad_field(source, n, answer_field, "answer_field", report)
            continue
        if not isinstance(q, str) or not q.strip():
            _bad_value(source, n, f"field {question_field!r} is not a non-empty string", report)
            continue
        try:
            gold = norm(a)
        except ValueError as exc:
            _bad_value(source, n, f"field {answer_field!r}: {exc}", report)
            continue
        ident: Any = n
        if id_field is not None:
            try:
                ident = get_field(row, id_field)
            except KeyError:
                _bad_field(source, n, id_field, "id_field", report)
                continue
        meta = {"source": source, "line": n}
        for f in meta_fields:
            try:
                meta[f.replace(".", "_")] = get_field(row, f)
            except KeyError:
                pass
        question = unwrap(q) if unwrap else q
        out.append(Example(id=f"{id_prefix}{ident}", question=question, answer=gold, meta=meta))
    return out


def _bad_field(source: str, n: int, fld: str, key: str, report: LoadReport | None) -> None:
    flag = "--" + key.replace("_", "-")
    msg = f"{source}:{n}: missing field {fld!r} (data.params.{key}; with rlentropy eval: {flag})"
    if report is None:
        raise DataError(msg + "; set data.skip_bad_rows=true to skip such rows")
    report.skip(msg)


def _bad_value(source: str, n: int, msg: str, report: LoadReport | None) -> None:
    full = f"{source}:{n}: {msg}"
    if report is None:
        raise DataError(full + "; set data.skip_bad_rows=true to skip such rows")
    report.skip(full)


def load_file(
    path: str | Path,
    *,
    question_field: str = "question",
    answer_field: str = "answer",
    id_field: str | None = None,
    answer_format: str = "raw",
    id_prefix: str = "",
    unwrap: Callable[[str], str] | None = None,
    meta_fields: Sequence[str] = (),
    skip_bad_rows: bool = False,
) -> tuple[list[Example], LoadReport]:
    """Examples from a .jsonl / .json / .parquet file with the given field mapping."""
    report = LoadReport(str(path))
    rep = report if skip_bad_rows else None
    rows = read_rows(path, report=rep)
    examples = rows_to_examples(
        rows,
        source=str(path),
        question_field=question_field,
        answer_field=answer_field,
        id_field=id_field,
        answer_format=answer_format,
        id_prefix=id_prefix,
        unwrap=unwrap,
        meta_fields=meta_fields,
        report=rep,
    )
    if not skip_bad_rows:
        report.rows = len(examples)
    if not examples:
        raise DataError(f"{path}: no usable rows ({report.skipped} skipped)")
    return examples, report


# ---------------------------------------------------------------------------------------------
# The bundled datasets
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetSpec:
    """Where a named dataset lives locally and on the Hugging Face hub, and its field mapping."""

    files: dict[str, str]  # split -> path under data_dir()
    question_field: str
    answer_field: str
    answer_format: str
    id_field: str | None
    hf_name: str
    hf_config: str | None
    hf_splits: dict[str, str]  # our split -> hub split
    hf_question_field: str
    hf_answer_field: str
    hf_answer_format: str
    meta_fields: tuple[str, ...] = ()


DATASETS: dict[str, DatasetSpec] = {
    "gsm8k": DatasetSpec(
        files={"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"},
        question_field="question",
        answer_field="answer",
        answer_format="gsm8k",
        id_field=None,
        hf_name="openai/gsm8k",
        hf_config="main",
        hf_splits={"train": "train", "test": "test"},
        hf_question_field="question",
        hf_answer_field="answer",
        hf_answer_format="gsm8k",
    ),
    "math500": DatasetSpec(
        files={"test": "math500/test.jsonl"},
        question_field="problem",
        answer_field="answer",
        answer_format="raw",
        id_field="unique_id",
        hf_name="HuggingFaceH4/MATH-500",
        hf_config=None,
        hf_splits={"test": "test"},
        hf_question_field="problem",
        hf_answer_field="answer",
        hf_answer_format="raw",
        meta_fields=("subject", "level"),
    ),
    "aime24": DatasetSpec(
        files={"test": "aime24/test.jsonl"},
        question_field="problem",
        answer_field="answer",
        answer_format="int",
        id_field="id",
        hf_name="HuggingFaceH4/aime_2024",
        hf_config=None,
        hf_splits={"test": "train"},
        hf_question_field="problem",
        hf_answer_field="answer",
        hf_answer_format="int",
        meta_fields=("url",),
    ),
    "aime25": DatasetSpec(
        files={"test": "aime25/test.jsonl"},
        question_field="problem",
        answer_field="answer",
        answer_format="int",
        id_field=None,
        hf_name="math-ai/aime25",
        hf_config=None,
        hf_splits={"test": "test"},
        hf_question_field="problem",
        hf_answer_field="answer",
        hf_answer_format="int",
    ),
    "amc23": DatasetSpec(
        files={"test": "amc23/test.jsonl"},
        question_field="problem",
        answer_field="answer",
        answer_format="int",
        id_field="id",
        hf_name="math-ai/amc23",
        hf_config=None,
        hf_splits={"test": "test"},
        hf_question_field="question",
        hf_answer_field="answer",
        hf_answer_format="int",
        meta_fields=("url",),
    ),
    "dapo17k": DatasetSpec(
        files={"train": "dapo_math_17k/dapo_math_17k.parquet"},
        question_field="prompt.0.content",
        answer_field="reward_model.ground_truth",
        answer_format="raw",
        id_field="extra_info.index",
        hf_name="BytedTsinghua-SIA/DAPO-Math-17k",
        hf_config=None,
        hf_splits={"train": "train"},
        hf_question_field="prompt.0.content",
        hf_answer_field="reward_model.ground_truth",
        hf_answer_format="raw",
    ),
}


def load_dataset_split(
    name: str,
    split: str,
    *,
    source: str = "local",
    skip_bad_rows: bool = False,
    reports: list[LoadReport] | None = None,
) -> list[Example]:
    """Examples of a bundled dataset split ("gsm8k"/"train", "math500"/"test", ...).

    Args:
        name: a key of `DATASETS`.
        split: "train" or "test" (what the dataset has).
        source: "local" (the bundled files, default) or "hf" (Hugging Face `datasets`, needs a
            network or a populated HF cache; never used by the tests).
        skip_bad_rows: count and skip malformed rows.
        reports: the split's `LoadReport` (rows read and skipped) is appended here when given.
    """
    from rlentropy.data.templates import dapo_unwrap

    spec = DATASETS[name]
    unwrap = dapo_unwrap if name == "dapo17k" else None
    if source == "local":
        if split not in spec.files:
            raise DataError(f"dataset {name!r} has no {split!r} split (has: {', '.join(spec.files)})")
        path = data_dir() / spec.files[split]
        st = path.stat()
        key = (name, split, skip_bad_rows, str(path), st.st_mtime_ns, st.st_size)
        if key not in _LOCAL_CACHE:
            while len(_LOCAL_CACHE) >= 4:  # a few splits at most (DAPO is ~18k rows)
                _LOCAL_CACHE.pop(next(iter(_LOCAL_CACHE)))
            _LOCAL_CACHE[key] = _load_local(spec, path, name, split, unwrap, skip_bad_rows)
        examples, report = _LOCAL_CACHE[key]
        if reports is not None:
            reports.append(report)
        return list(examples)
    if source == "hf":
        if split not in spec.hf_splits:
            raise DataError(f"dataset {name!r} has no {split!r} split on the hub")
        rows = load_hf_rows(spec.hf_name, spec.hf_config, spec.hf_splits[split])
        if name == "dapo17k":  # the hub copy repeats every prompt 100 times
            rows = _dedupe_rows(rows, "extra_info.index")
        report = LoadReport(spec.hf_name) if skip_bad_rows else None
        if reports is not None and report is not None:
            reports.append(report)
        return rows_to_examples(
            rows,
            source=spec.hf_name,
            question_field=spec.hf_question_field,
            answer_field=spec.hf_answer_field,
            answer_format=spec.hf_answer_format,
            id_prefix=f"{name}-{split}-",
            unwrap=unwrap,
            report=report,
        )
    raise DataError(f"data.params.source: unknown source {source!r}; allowed: local, hf")


_LOCAL_CACHE: dict[tuple, tuple[list[Example], LoadReport]] = {}


def _load_local(
    spec: DatasetSpec, path: Path, name: str, split: str, unwrap: Any, skip_bad_rows: bool
) -> tuple[list[Example], LoadReport]:
    return load_file(
        path,
        question_field=spec.question_field,
        answer_field=spec.answer_field,
        id_field=spec.id_field,
        answer_format=spec.answer_format,
        id_prefix=f"{name}-{split}-",
        unwrap=unwrap,
        meta_fields=spec.meta_fields,
        skip_bad_rows=skip_bad_rows,
    )


def _dedupe_rows(rows: list[tuple[int, dict]], key: str) -> list[tuple[int, dict]]:
    seen: set[Any] = set()
    out = []
    for n, row in rows:
        try:
            k = get_field(row, key)
        except KeyError:
            out.append((n, row))
            continue
        if k not in seen:
            seen.add(k)
            out.append((n, row))
    return out


def load_hf_rows(name: str, config: str | None, split: str) -> list[tuple[int, dict]]:
    """Rows of a Hugging Face dataset (`datasets.load_dataset(name, config, split=split)`)."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets ships with trl
        raise DataError("data.params.source=hf needs the `datasets` package") from None
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # noqa: BLE001 - network / hub errors come in many types
        raise DataError(
            f"cannot load Hugging Face dataset {name!r} (config {config!r}, split {split!r}): "
            f"{type(exc).__name__}: {exc}; offline, use the bundled copy (data.params.source=local)"
        ) from None
    return [(i, dict(row)) for i, row in enumerate(ds, 1)]


# ---------------------------------------------------------------------------------------------
# Splits and filters
# ---------------------------------------------------------------------------------------------
def stable_order(keys: Sequence[str], seed: int) -> list[int]:
    """Indices of `keys` sorted by sha256(f"{seed}:{key}"): a seeded shuffle that is identical on
    every platform and Python version."""
    return sorted(range(len(keys)), key=lambda i: hashlib.sha256(f"{seed}:{keys[i]}".encode()).hexdigest())


def holdout_split(examples: Sequence[Example], n_holdout: int, *, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, held_out): `n_holdout` examples chosen by `stable_order(ids, seed)`; train keeps
    the original order and also drops every example whose question text equals a held-out one
    (DAPO-Math-17k repeats 627 problem texts)."""
    if n_holdout >= len(examples):
        raise DataError(f"cannot hold out {n_holdout} of {len(examples)} examples")
    order = stable_order([e.id for e in examples], seed)
    held_idx = sorted(order[:n_holdout])
    held = [examples[i] for i in held_idx]
    held_q = {e.question for e in held}
    held_set = set(held_idx)
    train = [e for i, e in enumerate(examples) if i not in held_set and e.question not in held_q]
    return train, held


PASS_RATE_LOW = 1 / 16
PASS_RATE_HIGH = 15 / 16


def load_pass_rates(path: str | Path) -> dict[str, float]:
    """Pass rates from a JSONL file of `{"id": ..., "pass_rate": p}` or
    `{"id": ..., "correct": c, "samples": n}` rows (ids as in `Example.id`)."""
    rates: dict[str, float] = {}
    for n, row in read_rows(path):
        if "id" not in row:
            raise DataError(f"{path}:{n}: missing field 'id'")
        if "pass_rate" in row:
            r = row["pass_rate"]
        elif "correct" in row and "samples" in row:
            if not row["samples"]:
                raise DataError(f"{path}:{n}: 'samples' must be > 0")
            r = row["correct"] / row["samples"]
        else:
            raise DataError(f"{path}:{n}: needs 'pass_rate' or 'correct' and 'samples'")
        if not isinstance(r, (int, float)) or not 0.0 <= float(r) <= 1.0:
            raise DataError(f"{path}:{n}: pass rate must be a number in [0, 1], got {r!r}")
        rates[str(row["id"])] = float(r)
    return rates


def filter_by_pass_rate(
    examples: Sequence[Example],
    rates: dict[str, float],
    *,
    low: float = PASS_RATE_LOW,
    high: float = PASS_RATE_HIGH,
) -> tuple[list[Example], dict[str, int]]:
    """Drop examples with pass rate ≥ `high` (too easy) or ≤ `low` (too hard), as the Clip_B/V
    recipe did with Qwen2.5-7B-Instruct at 16 samples. Examples without a rate are kept.

    Returns (kept, counts) with counts "kept", "too_easy", "too_hard", "unrated".
    """
    kept: list[Example] = []
    counts = {"kept": 0, "too_easy": 0, "too_hard": 0, "unrated": 0}
    for e in examples:
        r = rates.get(e.id)
        if r is None:
            counts["unrated"] += 1
        elif r >= high - 1e-12:
            counts["too_easy"] += 1
            continue
        elif r <= low + 1e-12:
            counts["too_hard"] += 1
            continue
        kept.append(e)
    counts["kept"] = len(kept)
    return kept, counts


def write_pass_rates(path: str | Path, results: dict[str, tuple[int, int]]) -> None:
    """Write `{id: (correct, samples)}` as a pass-rate file readable by `load_pass_rates`."""
    p = Path(path)
    tmp = p.with_suffix(p.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for k, (c, n) in results.items():
            f.write(json.dumps({"id": k, "correct": int(c), "samples": int(n)}) + "\n")
    os.replace(tmp, p)
