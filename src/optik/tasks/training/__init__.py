"""The LightningModules of the tasks: thin steps over plain PyTorch (a loss, metrics, the optimizer), imported only to train."""
