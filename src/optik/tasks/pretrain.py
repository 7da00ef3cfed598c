"""Self-supervised pretraining: a method from lightly's parts over a timm backbone, trained on unlabelled
images; its package is the backbone (`backbone.pt`), which a classify run loads with `model.weights`
and `optik probe` measures. It has no classes, so it neither predicts nor is tested."""

from __future__ import annotations

from torch import nn

from optik.config import parse_config
from optik.data.transforms import Preprocess
from optik.errors import ModelError
from optik.models.classify import check_timm_name
from optik.models.package import ModelPackage, load_network
from optik.models.ssl import build_backbone
from optik.tasks.base import DEFAULT_RUN, Resume, Task, TrainingRun, say, untrained

NO_CLASSES = "fine-tune it with model.weights in a classify config, or measure it with optik probe"


class PretrainTask(Task):
    name = "pretrain"
    package_file = "backbone.pt"
    package_label = "backbone"

    def check_config(self, cfg) -> None:
        check_timm_name(cfg.model.name)

    def prepare(self, cfg, resume: Resume) -> TrainingRun:
        """The self-supervised method's module and the loader of multi-view batches (no validation)."""
        from optik.config.load import config_to_dict
        from optik.data.loaders import build_pretrain_data, make_loader
        from optik.models.ssl import build_ssl, view_transform
        from optik.tasks.training.pretrain import PretrainModule

        resume.check(cfg, [])
        dataset, skipped = build_pretrain_data(cfg.data, view_transform(cfg), seed=cfg.train.seed)
        say(
            f"data: {len(dataset)} unlabelled images"
            + (f"; {len(skipped)} unreadable image(s) left out" if skipped else "")
        )
        if cfg.ssl.method == "moco_v2" and cfg.ssl.memory_bank_size >= len(dataset):
            say(
                f"note: ssl.memory_bank_size {cfg.ssl.memory_bank_size} >= {len(dataset)} images: the bank will hold older keys of each "
                f"query's own image as negatives; set it to {max(cfg.data.batch_size, len(dataset) // 2)} or less"
            )
        backbone = build_backbone(cfg.model if resume.path is None else untrained(cfg.model), cfg.data.image_size)
        preprocess = Preprocess.from_data_config(cfg.data).to_dict()
        module = PretrainModule(build_ssl(cfg, backbone), config_to_dict(cfg), preprocess)
        # every step sees a full batch: contrastive losses and batch norm in the heads need it
        loader = make_loader(
            dataset,
            cfg.data.batch_size,
            cfg.data.num_workers,
            shuffle_seed=cfg.train.seed,
            drop_last=True,
            start_epoch=resume.epochs_done,
        )
        return TrainingRun(module, loader, None)

    def network(self, package: ModelPackage) -> nn.Module:
        config = parse_config(package.config)
        return load_network(build_backbone(untrained(config.model), package.preprocess["image_size"]), package)

    def network_from_config(self, cfg, num_classes: int | None = None) -> nn.Module:
        return build_backbone(untrained(cfg.model), cfg.data.image_size).eval()

    def check_predicts(self, source):
        raise ModelError(f"{source} is a pretrained backbone (no classes to predict); {NO_CLASSES}")

    def predictor(self, package, source, run=DEFAULT_RUN):
        self.check_predicts(source)

    def evaluate(
        self,
        package,
        source,
        data,
        split,
        run=DEFAULT_RUN,
        with_curves=False,
        images=None,
        skip_bad=False,
        predictor=None,
    ):
        raise ModelError(f"{source} is a pretrained backbone (no classes); {NO_CLASSES}")

    def feature_network(self, package, source):
        return self.network(package)


PRETRAIN = PretrainTask()
