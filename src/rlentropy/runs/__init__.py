"""What a run directory is: the config schema and its loading, the directory layout and the
checkpoints in it. Both the trainer and the evaluation read runs through this package, so neither
imports the other (docs/architecture.md).

    from rlentropy.runs.config import RunConfig, load_config
    from rlentropy.runs.checkpoints import list_checkpoints, latest_checkpoint
"""
