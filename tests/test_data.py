"""Real math datasets: loaders, bad input, splits, filters, templates, and gold answers verifying."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from _helpers import ChatMLTokenizer
from rlentropy.data import DataConfig, build_task, loaders
from rlentropy.data.templates import (
    DAPO_HEAD,
    TEMPLATES,
    apply_chat,
    dapo_unwrap,
    dapo_wrap,
    get_template,
)
from rlentropy.errors import ConfigError, DataError
from rlentropy.rewards import VerifierPool

DATA = loaders.data_dir()


@pytest.fixture(scope="module")
def pool():
    p = VerifierPool(2, timeout_s=3.0).start()
    yield p
    p.close()


def _task(name: str, template: str, pool) -> object:
    task = build_task(DataConfig(task=name, template=template))
    task.scorer.pool = pool
    return task


# --------------------------------------------------------------------------------------------- bundled data
EXPECTED_COUNTS = {
    "gsm8k": (7473, 1319),
    "math500": (None, 500),
    "aime24": (None, 30),
    "aime25": (None, 30),
    "amc23": (None, 40),
    "dapo": (17917 - 500 - 31, 500),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_COUNTS))
def test_bundled_counts_and_sources(name):
    n_train, n_eval = EXPECTED_COUNTS[name]
    task = build_task(DataConfig(task=name))
    assert len(task.eval_examples()) == n_eval
    if n_train is None:
        with pytest.raises(ConfigError, match="data.task: .*evaluation set"):
            task.train_examples()
    else:
        assert len(task.train_examples()) == n_train
    folder = {"dapo": "dapo_math_17k"}.get(name, name)
    assert (DATA / folder / "SOURCE.md").read_text().count("icense") >= 1  # licence recorded


def test_gold_normalisation_matches_sources():
    # SOURCE.md answer lists: AIME 2024 in file order with leading zeros dropped; AMC floats as ints.
    aime24 = [e.answer for e in build_task(DataConfig(task="aime24")).eval_examples()]
    assert aime24[:8] == ["204", "113", "371", "385", "110", "104", "721", "25"]
    aime25 = [e.answer for e in build_task(DataConfig(task="aime25")).eval_examples()]
    assert aime25[:3] == ["70", "588", "16"] and aime25[-1] == "240"
    amc = build_task(DataConfig(task="amc23")).eval_examples()
    assert amc[0].answer == "27" and amc[0].question.startswith("Cities $A$ and $B$")
    gsm = build_task(DataConfig(task="gsm8k")).eval_examples()[0]
    assert gsm.answer == "18" and gsm.question.startswith("Janet")
    m5 = build_task(DataConfig(task="math500")).eval_examples()[0]
    assert m5.answer == r"\left( 3, \frac{\pi}{2} \right)" and m5.meta["subject"] == "Precalculus"
    dapo_row1 = loaders.load_dataset_split("dapo17k", "train")[1]
    assert dapo_row1.answer == "113" and dapo_row1.question.startswith("Let $ABCD$ be a unit square")


def test_dapo_validation_split_is_fixed_and_disjoint():
    a = build_task(DataConfig(task="dapo"))
    b = build_task(DataConfig(task="dapo-validation-500"))
    held = a.eval_examples()
    assert [e.id for e in held] == [e.id for e in b.eval_examples()]  # same seed → same 500
    train = a.train_examples()
    held_ids, held_q = {e.id for e in held}, {e.question for e in held}
    assert len(held_ids) == 500
    assert not held_ids & {e.id for e in train}
    assert not held_q & {e.question for e in train}  # repeated texts of held-out problems dropped too
    other = build_task(DataConfig(task="dapo", seed=1)).eval_examples()
    assert {e.id for e in other} != held_ids
    # The order is a sha256 of "<seed>:<id>": platform- and version-independent. Pin the first id.
    assert loaders.stable_order(["a", "b", "c"], 0) == sorted(
        range(3), key=lambda i: __import__("hashlib").sha256(f"0:{'abc'[i]}".encode()).hexdigest()
    )


def test_math_suite_is_the_clip_eval_sets():
    ex = build_task(DataConfig(task="math-suite")).eval_examples()
    counts: dict[str, int] = {}
    for e in ex:
        counts[e.meta["dataset"]] = counts.get(e.meta["dataset"], 0) + 1
    assert counts == {"dapo-validation-500": 500, "aime24": 30, "aime25": 30, "amc23": 40}


def test_pass_rate_filter(tmp_path):
    task = build_task(DataConfig(task="dapo", max_train=None))
    train = task.train_examples()
    ids = [e.id for e in train[:4]]
    rates = tmp_path / "rates.jsonl"
    # 16/16 and 15/16 too easy, 1/16 and 0/16 too hard; 2/16 kept.
    loaders.write_pass_rates(rates, {ids[0]: (16, 16), ids[1]: (15, 16), ids[2]: (1, 16), ids[3]: (2, 16)})
    rows = [json.loads(x) for x in rates.read_text().splitlines()]
    rows.append({"id": train[4].id, "pass_rate": 0.0})
    rates.write_text("".join(json.dumps(r) + "\n" for r in rows))
    f = build_task(DataConfig(task="dapo", params={"pass_rate_file": str(rates)}))
    kept = f.train_examples()
    assert len(kept) == len(train) - 4
    assert ids[3] in {e.id for e in kept} and ids[0] not in {e.id for e in kept}
    assert f.filter_counts == {"kept": len(train) - 4, "too_easy": 2, "too_hard": 2, "unrated": len(train) - 5}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "pass_rate": 1.5}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: pass rate"):
        loaders.load_pass_rates(bad)


# --------------------------------------------------------------------------------------------- files, bad input
def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_missing_answer_names_file_and_line(tmp_path):
    p = _jsonl(tmp_path / "d.jsonl", [{"q": "1+1", "a": "2"}, {"q": "2+2"}, {"q": "3+3", "a": "6"}])
    cfg = DataConfig(task="file", path=str(p), params={"question_field": "q", "answer_field": "a", "eval_size": 1})
    with pytest.raises(
        DataError,
        match=r"d\.jsonl:2: missing field 'a' \(data\.params\.answer_field; with rlentropy eval: --answer-field\)",
    ):
        build_task(cfg).train_examples()
    cfg2 = cfg.model_copy(update={"skip_bad_rows": True})
    task = build_task(cfg2)
    assert len(task.train_examples()) + len(task.eval_examples()) == 2
    assert task.load_reports[0].skipped == 1 and "d.jsonl:2" in task.load_reports[0].reasons[0]


def test_invalid_json_and_non_utf8(tmp_path):
    p = _jsonl(tmp_path / "j.jsonl", [{"question": "a", "answer": "1"}, "{not json"])
    with pytest.raises(DataError, match=r"j\.jsonl:2: invalid JSON"):
        loaders.load_file(p)
    ex, rep = loaders.load_file(p, skip_bad_rows=True)
    assert len(ex) == 1 and rep.skipped == 1
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"question": "a", "answer": "1"}\n{"question": "caf\xe9", "answer": "2"}\n')
    for skip in (False, True):
        with pytest.raises(DataError, match=r"latin1\.jsonl:2: file is not valid UTF-8"):
            loaders.load_file(bad, skip_bad_rows=skip)
    with pytest.raises(DataError, match="no such dataset file"):
        loaders.load_file(tmp_path / "missing.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported dataset format"):
        loaders.load_file(tmp_path / "x.csv")


def test_parquet_with_dotted_fields_and_answer_formats(tmp_path):
    rows = [
        {
            "prompt": [{"role": "user", "content": dapo_wrap(f"What is {i}+{i}?")}],
            "reward_model": {"ground_truth": f"#### {2 * i:,}"},
            "extra_info": {"index": 100 + i},
        }
        for i in range(600, 620)
    ]
    path = tmp_path / "v.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    ex, _ = loaders.load_file(
        path,
        question_field="prompt.0.content",
        answer_field="reward_model.ground_truth",
        id_field="extra_info.index",
        answer_format="gsm8k",
        unwrap=dapo_unwrap,
    )
    assert ex[0].id == "700" and ex[0].question == "What is 600+600?" and ex[0].answer == "1200"
    task = build_task(
        DataConfig(
            task="file",
            path=str(path),
            params={
                "question_field": "prompt.0.content",
                "answer_field": "reward_model.ground_truth",
                "answer_format": "gsm8k",
                "eval_size": 5,
            },
        )
    )
    tr, ev = task.train_examples(), task.eval_examples()
    assert len(tr) == 15 and len(ev) == 5 and not {e.id for e in tr} & {e.id for e in ev}


def test_param_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.params\.bogus: unknown key"):
        build_task(DataConfig(task="gsm8k", params={"bogus": 1}))
    with pytest.raises(ConfigError, match=r"data\.params\.question_field: only the 'file' task"):
        build_task(DataConfig(task="gsm8k", params={"question_field": "q"}))
    with pytest.raises(ConfigError, match=r"data\.params\.verify_timeout_s"):
        build_task(DataConfig(task="gsm8k", params={"verify_timeout_s": 0}))
    with pytest.raises(ConfigError, match=r"data\.path: the 'file' task needs"):
        build_task(DataConfig(task="file"))
    with pytest.raises(ConfigError, match=r"data\.template: unknown template 'nope'"):
        build_task(DataConfig(task="gsm8k", template="nope"))
    with pytest.raises(DataError, match="data.params.source"):
        loaders.load_dataset_split("gsm8k", "test", source="ftp")


def test_data_dir_override(tmp_path, monkeypatch):
    monkeypatch.setenv("RLENTROPY_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match="RLENTROPY_DATA_DIR"):
        loaders.data_dir()


def test_hf_source_uses_hub_field_mapping(monkeypatch):
    calls = []

    def fake(name, config, split):
        calls.append((name, config, split))
        row = {
            "prompt": [{"content": dapo_wrap("Q?"), "role": "user"}],
            "reward_model": {"ground_truth": "7"},
            "extra_info": {"index": 3},
        }
        return [(i, row) for i in range(1, 4)]  # the hub copy repeats prompts: deduplicated

    monkeypatch.setattr(loaders, "load_hf_rows", fake)
    ex = loaders.load_dataset_split("dapo17k", "train", source="hf")
    assert calls == [("BytedTsinghua-SIA/DAPO-Math-17k", None, "train")]
    assert len(ex) == 1 and ex[0].question == "Q?" and ex[0].answer == "7"


# --------------------------------------------------------------------------------------------- templates


def test_templates_render_exactly():
    q = "What is 2+3?"
    r1 = get_template("r1").render(q)
    assert r1 == (
        "You are solving math problems. Respond by reasoning through the problem then providing a final "
        "answer. Enclose the reasoning process within <think> </think> and the answer within <answer> "
        "</answer> tags, i.e., <think> reasoning process here </think> <answer> answer here </answer>.\n"
        "Question: What is 2+3?\nResponse: <think>"
    )
    assert get_template("plain").render(q) == (
        "Question: What is 2+3?\nPlease reason step by step, and put your final answer within \\boxed{}.\nAnswer:"
    )
    assert get_template("chat").render(q, ChatMLTokenizer()) == (
        "<|im_start|>user\nWhat is 2+3?\nPlease reason step by step, and put your final answer within "
        "\\boxed{}.<|im_end|>\n<|im_start|>assistant\n"
    )
    dapo = get_template("dapo")
    assert dapo.render(q) == DAPO_HEAD + q + '\n\nRemember to put your answer on its own line after "Answer:".\n'
    assert dapo.render(q, ChatMLTokenizer()).startswith("<|im_start|>user\nSolve the following math problem")
    with pytest.raises(ConfigError, match="chat template"):
        apply_chat(object(), "x")
    # The default template follows the tokenizer: chat when it has one, plain otherwise.
    task = build_task(DataConfig(task="gsm8k"))
    ex = task.eval_examples()[0]
    assert task.render_prompt(ex, ChatMLTokenizer()).startswith("<|im_start|>user\nJanet")
    assert task.render_prompt(ex, None).startswith("Question: Janet")


def test_dapo_wrapper_restores_upstream_prompts_exactly():
    # DAPO's AIME-2024 eval parquet stores upstream-wrapped prompts next to the raw problems.
    rows = pq.read_table(DATA / "aime24" / "aime-2024.parquet").to_pylist()
    assert len(rows) == 960
    for r in rows:
        wrapped = r["prompt"][0]["content"]
        assert dapo_wrap(r["extra_info"]["raw_problem"]) == wrapped
        assert dapo_unwrap(wrapped) == r["extra_info"]["raw_problem"]
    assert dapo_unwrap("plain text") == "plain text"


# --------------------------------------------------------------------------------------------- golds verify
GOLD_SETS = {
    "gsm8k": lambda: (
        build_task(DataConfig(task="gsm8k")).train_examples() + build_task(DataConfig(task="gsm8k")).eval_examples()
    ),
    "math500": lambda: build_task(DataConfig(task="math500")).eval_examples(),
    "aime24": lambda: build_task(DataConfig(task="aime24")).eval_examples(),
    "aime25": lambda: build_task(DataConfig(task="aime25")).eval_examples(),
    "amc23": lambda: build_task(DataConfig(task="amc23")).eval_examples(),
    "dapo17k": lambda: loaders.load_dataset_split("dapo17k", "train"),
}


# raw / raw_chat extract with "auto", whose \boxed{} branch the other templates cover (format_answer writes
# a boxed answer for them): left out to keep this expensive check's time.
@pytest.mark.parametrize("dataset", sorted(GOLD_SETS))
@pytest.mark.parametrize("template", sorted(t for t in TEMPLATES if not t.startswith("raw")))
def test_every_gold_answer_verifies_in_every_template(dataset, template, pool):
    examples = GOLD_SETS[dataset]()
    task = _task("gsm8k", template, pool)  # the scorer depends on the template only
    tpl = get_template(template)
    completions = [tpl.format_answer(e.answer) for e in examples]
    rewards = task.score(completions, examples)
    bad = [(e.id, e.answer) for e, r in zip(examples, rewards) if r != 1.0]
    assert not bad, f"{len(bad)} golds failed, first: {bad[:5]}"
    assert pool.stats.timeouts == 0


@pytest.mark.parametrize("dataset", sorted(GOLD_SETS))
def test_wrong_answers_score_zero(dataset, pool):
    examples = GOLD_SETS[dataset]()[:300]
    task = _task("gsm8k", "chat", pool)
    # Each example gets the next example's gold, when that is a different answer. ("x=5" for gold
    # "5" is the same answer to math-verify, rightly: such pairs are left out.)
    pairs = [
        (e, nxt.answer)
        for e, nxt in zip(examples, examples[1:] + examples[:1])
        if nxt.answer != e.answer and nxt.answer.split("=")[-1].strip() != e.answer
    ]
    assert len(pairs) > 0.5 * len(examples) or len(examples) < 60
    rewards = task.score([TEMPLATES["chat"].format_answer(a) for _, a in pairs], [e for e, _ in pairs])
    wrong = [(e.answer, a) for (e, a), r in zip(pairs, rewards) if r != 0.0]
    assert not wrong, wrong[:5]
    # A correct answer in the wrong format scores 0 under R1 (format × correctness).
    r1 = _task("gsm8k", "r1", pool)
    e = examples[0]
    assert r1.score([f" {e.answer}", TEMPLATES["r1"].format_answer(e.answer)], [e, e]) == [0.0, 1.0]
