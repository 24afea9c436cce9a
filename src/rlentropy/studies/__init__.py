"""Applications built on the trainer, the evaluation and the report: the CPU demo and the studies
(`rlentropy demo`, `rlentropy study`)."""
