"""Entropy-dynamics theory and probes: pure tensor math, no I/O.

* `pressure`: per-token first-order ΔH (Theorem 3.3) and the quadrant decomposition.
* `step`: step-level prediction ∇H · Δθ from the measured optimizer update.
* `logit_check`: −Σ S δz against the measured per-position ΔH.
* `covariance`: Cov(log p, A) (Cui et al.) and the fit R = −a·exp(H) + b.
* `fisher`: sequence Fisher kernel K = g P gᵀ (Adam metric applied once), spectrum, influence K·A.
* `noise`: within-step gradient noise scale B_simple with effective sample sizes.
* `summary`: predicted vs measured ΔH across steps.

The trainer-side wiring (I/O, model access) is `rlentropy.train.probes.DynamicsProbe`.
See docs/dynamics.md.
"""

from rlentropy.dynamics.covariance import fit_entropy_performance, logp_advantage_covariance
from rlentropy.dynamics.fisher import adam_metric, fisher_kernel, kernel_influence, kernel_summary
from rlentropy.dynamics.logit_check import correlation, entropy_and_s, logit_space_check
from rlentropy.dynamics.noise import effective_sample_size, noise_scale
from rlentropy.dynamics.pressure import QUADRANTS, THEOREM_SIGN, quadrant_decomposition, quadrant_ids, token_pressure
from rlentropy.dynamics.step import masked_token_mean, param_delta_dot, step_prediction
from rlentropy.dynamics.summary import entropy_performance_fit, prediction_agreement

__all__ = [
    "QUADRANTS",
    "THEOREM_SIGN",
    "adam_metric",
    "correlation",
    "effective_sample_size",
    "entropy_and_s",
    "entropy_performance_fit",
    "fisher_kernel",
    "fit_entropy_performance",
    "kernel_influence",
    "kernel_summary",
    "logit_space_check",
    "logp_advantage_covariance",
    "masked_token_mean",
    "noise_scale",
    "param_delta_dot",
    "prediction_agreement",
    "quadrant_decomposition",
    "quadrant_ids",
    "step_prediction",
    "token_pressure",
]
