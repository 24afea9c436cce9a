"""Adapters that bring rlentropy's controls and statistics into other RL trainers.

- `rlentropy.integrations.trl` (extra `[trl]`): `EntropyGRPOConfig` / `EntropyGRPOTrainer`, a
  `trl.GRPOTrainer` subclass with Clip_B, Clip_V, Clip-Cov, KL-Cov and TokenStats metrics.
- `rlentropy.integrations.verl` (extra `[verl]`): our policy losses and advantage estimators in
  verl's registries (`rlentropy_*` names) and the actor-side piece that supplies entropy and s_bar.
- `rlentropy.integrations.common`: the framework-free pieces both adapters share (control masks over
  a whole batch, the per-step statistics summary).

The sub-modules are imported explicitly; importing this package imports neither TRL nor verl.
"""
