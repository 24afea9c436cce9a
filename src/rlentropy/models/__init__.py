"""Models: the shipped tiny policy (`tiny`), its pretraining (`pretrain`), loading and the fused forward."""
