"""LightningModules: thin wrappers that give the Trainer a step, a loss and an optimizer."""
