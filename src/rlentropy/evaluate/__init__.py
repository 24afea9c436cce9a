"""Evaluation: pass@k (unbiased), avg@n, maj@k, entropy and length of samples, over checkpoints.

    from rlentropy.evaluate import evaluate_model
    metrics, samples = evaluate_model(model, tokenizer, task, n=8, temperature=0.7, top_p=1.0,
                                      max_new_tokens=64)

`rlentropy eval RUN_OR_CHECKPOINT` (`rlentropy.evaluate.run.eval_command`) evaluates checkpoints of
a run and writes `eval/step_N/{metrics.json, samples.jsonl.gz}` and `eval/metrics.csv`.
See docs/evaluation.md.
"""

from rlentropy.evaluate.core import evaluate_model
from rlentropy.evaluate.metrics import ks_up_to, maj_at_k_mean, majority_vote_score, pass_at_k_mean, sample_metrics

__all__ = [
    "evaluate_model",
    "ks_up_to",
    "maj_at_k_mean",
    "majority_vote_score",
    "pass_at_k_mean",
    "sample_metrics",
]
