"""Training and evaluation runs: work dir, Trainer, checkpoints, the model package, metrics."""
