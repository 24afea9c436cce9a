"""`rlentropy check CONFIG [key=value ...]`: validate a training config without training.

    report = check_config("configs/demo_countdown.yaml", ["train.steps=5"])
    report.exit_code      # 2 when any line is FAIL, else 0
    print(report.text())

The checks (`rlentropy.check.core`), in order: the config (YAML, overrides, plugins, every key), the
model (its config and tokenizer only: no weights are loaded, nothing is downloaded or converted; a hub
model that is not cached is a WARN), its size (parameters counted on the meta device, trainable vs total
with LoRA), the device, the dataset (rows, bad rows skipped, prompts over the length limit), the
methods (names, parameters, one call on a dummy batch), the run directory; then what would run
(sequences and tokens per step, steps, checkpoints, evaluation, probes) and the memory of weights +
gradients + AdamW states in the config's dtype.
"""

from rlentropy.check.core import CheckReport, Line, check_command, check_config

__all__ = ["CheckReport", "Line", "check_command", "check_config"]
