"""Self-supervised methods over a timm backbone, assembled from lightly's heads, losses, memory banks,
momentum updates and multi-view transforms. One loss is written here: Barlow Twins, because lightly's
normalises each process's share of the batch by its own statistics under DDP.

Each method is an `nn.Module` with the backbone as `.backbone` (what `backbone.pt` exports) and
`loss(views, epoch, progress)`: the training loss of one batch of views, where `progress` (0 to 1)
drives the momentum schedule. Methods that keep a momentum copy update it in `step_momentum`;
DINO freezes its last layer's gradients in `after_backward`. Under DDP, SimCLR and MoCo v3 gather
negatives from every process, SwaV runs its Sinkhorn step over the whole batch, Barlow Twins
normalises and correlates over it, and DINO's centre is the whole batch's mean: N processes compute
what one process does on the combined batch (tests/models/test_ssl_distributed.py). MoCo v2's
memory bank stays per process (lightly's bank is not gathered).
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

# Projection sizes and temperatures of each method's paper.
OUT_DIMS = {
    "simclr": 128,
    "moco_v2": 128,
    "moco_v3": 256,
    "byol": 256,
    "simsiam": 2048,
    "swav": 128,
    "barlow_twins": 2048,
    "dino": 2048,
}
TEMPERATURES = {"simclr": 0.5, "moco_v2": 0.2, "moco_v3": 0.2, "swav": 0.1}


def build_backbone(model_cfg, image_size: int = 224) -> nn.Module:
    """The timm backbone without its classifier (pooled features, `num_features` wide)."""
    from optik.models.classify import build_timm

    backbone = build_timm(model_cfg.name, 0, image_size, model_cfg.pretrained, 0.0, 0.0, any_size=True)
    if model_cfg.weights is not None:
        from optik.models.weights import load_weights

        for line in load_weights(backbone, model_cfg.weights, model_cfg.weights_prefix).lines():
            print(line)
    return backbone


def frozen_copy(module: nn.Module) -> nn.Module:
    from lightly.models.utils import deactivate_requires_grad

    twin = copy.deepcopy(module)
    deactivate_requires_grad(twin)
    return twin


class SSLMethod(nn.Module):
    """Base: the backbone, the momentum schedule, and the hooks the training module calls."""

    momentum_pairs: tuple[tuple[str, str], ...] = ()  # (online, momentum copy) attribute names
    backbone_prefix = "backbone."  # the keys of `export_backbone()` in this module's state_dict

    def __init__(self, backbone: nn.Module, cfg):
        super().__init__()
        self.backbone, self.cfg = backbone, cfg
        self.dim = backbone.num_features

    def step_momentum(self, progress: float) -> None:
        """Move each momentum copy towards its online module (momentum rises from cfg.momentum to 1)."""
        if not self.momentum_pairs:
            return
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        m = cosine_schedule(int(progress * 1000), 1000, self.cfg.momentum, 1.0)
        for online, twin in self.momentum_pairs:
            update_momentum(getattr(self, online), getattr(self, twin), m=m)

    def after_backward(self, epoch: int) -> None:
        """Hook between backward and the optimizer step; only DINO uses it (its frozen last layer)."""

    def export_backbone(self) -> nn.Module:
        """The backbone that `backbone.pt` holds (the online one; DINO: the teacher)."""
        return self.backbone

    def loss(self, views: list[torch.Tensor], epoch: int, progress: float) -> torch.Tensor:
        raise NotImplementedError


class SimCLR(SSLMethod):
    def __init__(self, backbone, cfg, out_dim, temperature):
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead

        super().__init__(backbone, cfg)
        self.head = SimCLRProjectionHead(self.dim, cfg.hidden_dim, out_dim)
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=True)

    def loss(self, views, epoch, progress):
        z0, z1 = (self.head(self.backbone(v)) for v in views[:2])
        return self.criterion(z0, z1)


class MoCoV2(SSLMethod):
    """MoCo v2: a momentum key encoder and a memory bank of earlier keys as negatives."""

    momentum_pairs = (("backbone", "key_backbone"), ("head", "key_head"))

    def __init__(self, backbone, cfg, out_dim, temperature):
        from lightly.loss import NTXentLoss
        from lightly.models.modules import MoCoProjectionHead

        super().__init__(backbone, cfg)
        self.head = MoCoProjectionHead(self.dim, cfg.hidden_dim, out_dim)
        self.key_backbone, self.key_head = frozen_copy(self.backbone), frozen_copy(self.head)
        self.criterion = NTXentLoss(temperature=temperature, memory_bank_size=(cfg.memory_bank_size, out_dim))

    def loss(self, views, epoch, progress):
        query = self.head(self.backbone(views[0]))
        with torch.no_grad():
            key = self.key_head(self.key_backbone(views[1]))
        return self.criterion(query, key)


class MoCoV3(SSLMethod):
    """MoCo v3: in-batch negatives across processes, a predictor on the query side, symmetric loss."""

    momentum_pairs = (("backbone", "key_backbone"), ("head", "key_head"))

    def __init__(self, backbone, cfg, out_dim, temperature):
        from lightly.loss import NTXentLoss
        from lightly.models.modules import BYOLPredictionHead, MoCoProjectionHead

        super().__init__(backbone, cfg)
        self.head = MoCoProjectionHead(self.dim, cfg.hidden_dim, out_dim, num_layers=3, batch_norm=True)
        self.predictor = BYOLPredictionHead(out_dim, cfg.hidden_dim, out_dim)
        self.key_backbone, self.key_head = frozen_copy(self.backbone), frozen_copy(self.head)
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=True)

    def loss(self, views, epoch, progress):
        q0, q1 = (self.predictor(self.head(self.backbone(v))) for v in views[:2])
        with torch.no_grad():
            k0, k1 = (self.key_head(self.key_backbone(v)) for v in views[:2])
        return 0.5 * (self.criterion(q0, k1) + self.criterion(q1, k0))


class BYOL(SSLMethod):
    momentum_pairs = (("backbone", "target_backbone"), ("head", "target_head"))

    def __init__(self, backbone, cfg, out_dim, temperature):
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead

        super().__init__(backbone, cfg)
        self.head = BYOLProjectionHead(self.dim, cfg.hidden_dim, out_dim)
        self.predictor = BYOLPredictionHead(out_dim, cfg.hidden_dim, out_dim)
        self.target_backbone, self.target_head = frozen_copy(self.backbone), frozen_copy(self.head)
        self.criterion = NegativeCosineSimilarity()

    def loss(self, views, epoch, progress):
        p0, p1 = (self.predictor(self.head(self.backbone(v))) for v in views[:2])
        with torch.no_grad():
            t0, t1 = (self.target_head(self.target_backbone(v)) for v in views[:2])
        return 0.5 * (self.criterion(p0, t1) + self.criterion(p1, t0))


class SimSiam(SSLMethod):
    def __init__(self, backbone, cfg, out_dim, temperature):
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead

        super().__init__(backbone, cfg)
        self.head = SimSiamProjectionHead(self.dim, cfg.hidden_dim, out_dim)
        self.predictor = SimSiamPredictionHead(out_dim, max(8, cfg.hidden_dim // 4), out_dim)
        self.criterion = NegativeCosineSimilarity()

    def loss(self, views, epoch, progress):
        z0, z1 = (self.head(self.backbone(v)) for v in views[:2])
        p0, p1 = self.predictor(z0), self.predictor(z1)
        return 0.5 * (self.criterion(p0, z1.detach()) + self.criterion(p1, z0.detach()))


class SwaV(SSLMethod):
    """SwaV: online clustering onto prototypes, swapped prediction between the global and local crops."""

    def __init__(self, backbone, cfg, out_dim, temperature):
        from lightly.loss import SwaVLoss
        from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes

        super().__init__(backbone, cfg)
        self.head = SwaVProjectionHead(self.dim, cfg.hidden_dim, out_dim)
        self.prototypes = SwaVPrototypes(out_dim, cfg.prototypes, n_steps_frozen_prototypes=cfg.freeze_prototypes_steps)
        # prototypes are unit vectors (the paper's); an offset would grow unchecked, and exp() overflow
        for layer in self.prototypes.heads:
            layer.register_parameter("bias", None)
        self.criterion = SwaVLoss(temperature=temperature, sinkhorn_gather_distributed=True)
        # in checkpoints: a resumed run keeps its count
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))

    def loss(self, views, epoch, progress):
        self.prototypes.normalize()
        step = int(self.steps_done)
        outputs = [self.prototypes(nn.functional.normalize(self.head(self.backbone(v)), dim=1), step) for v in views]
        if self.training:
            self.steps_done += 1
        return self.criterion(outputs[:2], outputs[2:])


def world_size() -> int:
    """How many processes train together (1 outside DDP)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def batch_sum(x: torch.Tensor) -> torch.Tensor:
    """`x` summed over every process, with gradients back to each process's share (`x` in one process)."""
    if world_size() == 1:
        return x
    from torch.distributed import nn as dist_nn

    return dist_nn.all_reduce(x)


def batch_normalise(z: torch.Tensor) -> torch.Tensor:
    """Each feature to mean 0 and variance 1 over the whole batch, across processes (the paper's
    SyncBatchNorm), so N processes of n images compute what one process of N x n does."""
    n = len(z) * world_size()  # every process has a full batch (drop_last, and the sampler evens the shares)
    mean = batch_sum(z.sum(0)) / n
    var = batch_sum((z - mean).pow(2).sum(0)) / n
    return (z - mean) / torch.sqrt(var + 1e-5)


class BarlowTwins(SSLMethod):
    """Barlow Twins: the cross-correlation of the two views' normalised projections is pushed to the
    identity. lightly's loss sums the matrix over processes but normalises each process's share by
    its own statistics; here the statistics are the whole batch's (in one process it is lightly's loss)."""

    def __init__(self, backbone, cfg, out_dim, temperature):
        from lightly.models.modules import BarlowTwinsProjectionHead

        super().__init__(backbone, cfg)
        self.head = BarlowTwinsProjectionHead(self.dim, cfg.hidden_dim, out_dim)

    def loss(self, views, epoch, progress):
        z0, z1 = (batch_normalise(self.head(self.backbone(v))) for v in views[:2])
        c = batch_sum(z0.T @ z1) / (len(z0) * world_size())
        on_diagonal = (torch.diagonal(c) - 1).pow(2).sum()
        off_diagonal = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
        return on_diagonal + self.cfg.lambda_param * off_diagonal


class DINO(SSLMethod):
    """DINO: a student matches a momentum teacher's centred, sharpened output; the teacher sees the
    global views only, the student every view."""

    momentum_pairs = (("backbone", "teacher_backbone"), ("head", "teacher_head"))
    backbone_prefix = "teacher_backbone."

    def __init__(self, backbone, cfg, out_dim, temperature):
        from lightly.loss import DINOLoss
        from lightly.models.modules import DINOProjectionHead

        super().__init__(backbone, cfg)
        # batch norm in the head when the backbone has it (ResNets: lightly's recipe); the paper's ViTs have none
        batch_norm = cfg.head_batch_norm
        if batch_norm is None:
            batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in backbone.modules())
        head = dict(
            input_dim=self.dim,
            hidden_dim=cfg.hidden_dim,
            bottleneck_dim=cfg.bottleneck_dim,
            output_dim=out_dim,
            batch_norm=batch_norm,
        )
        with warnings.catch_warnings():  # lightly's head uses torch's older weight_norm, which warns of its deprecation
            warnings.simplefilter("ignore", FutureWarning)
            self.head = DINOProjectionHead(**head, freeze_last_layer=cfg.freeze_last_layer_epochs)
            self.teacher_head = DINOProjectionHead(**head)  # weight norm cannot be deep-copied
        self.teacher_backbone = frozen_copy(self.backbone)
        self.teacher_head.load_state_dict(self.head.state_dict())
        self.teacher_head.requires_grad_(False)
        self.criterion = DINOLoss(
            output_dim=out_dim,
            warmup_teacher_temp=min(0.04, cfg.teacher_temp),
            teacher_temp=cfg.teacher_temp,
            warmup_teacher_temp_epochs=cfg.warmup_teacher_temp_epochs,
            center_momentum=cfg.center_momentum,
        )

    def loss(self, views, epoch, progress):
        with torch.no_grad():
            teacher = [self.teacher_head(self.teacher_backbone(v)) for v in views[:2]]
        student = [self.head(self.backbone(v)) for v in views]
        return self.criterion(teacher, student, epoch=epoch)

    def after_backward(self, epoch):
        self.head.cancel_last_layer_gradients(current_epoch=epoch)

    def export_backbone(self):
        return self.teacher_backbone


METHODS: dict[str, type[SSLMethod]] = {
    "simclr": SimCLR,
    "moco_v2": MoCoV2,
    "moco_v3": MoCoV3,
    "byol": BYOL,
    "simsiam": SimSiam,
    "swav": SwaV,
    "barlow_twins": BarlowTwins,
    "dino": DINO,
}


def build_ssl(cfg, backbone: nn.Module) -> SSLMethod:
    """The method `cfg.ssl.method` around `backbone`."""
    check_small_crops(cfg, backbone)
    ssl = cfg.ssl
    out_dim = ssl.out_dim or OUT_DIMS[ssl.method]
    temperature = ssl.temperature or TEMPERATURES.get(ssl.method, 0.5)
    return METHODS[ssl.method](backbone, ssl, out_dim, temperature)


def local_crops(cfg) -> tuple[int, int]:
    """swav/dino: how many small crops, and their size (default 6 of 3/7 the image size)."""
    views = cfg.ssl.views
    return (6 if views.local_views is None else views.local_views), views.local_size or max(
        8, round(cfg.data.image_size * 3 / 7)
    )


def check_small_crops(cfg, backbone: nn.Module) -> None:
    """Multi-crop feeds the backbone crops smaller than `data.image_size`. Transformers whose timm model
    cannot take another size (no dynamic_img_size) would fail at the first step; say so before training."""
    count, size = local_crops(cfg)
    if cfg.ssl.method not in ("swav", "dino") or not count:
        return
    training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            backbone(torch.zeros(1, 3, size, size))
    except (RuntimeError, AssertionError, ValueError) as exc:
        from optik.errors import ConfigError

        raise ConfigError(
            f"{cfg.ssl.method}'s small crops ({count} of {size} px) do not go through {cfg.model.name} "
            f"({str(exc).splitlines()[0].rstrip('.')}). Set ssl.views.local_views=0, a larger ssl.views.local_size, or a backbone "
            "that takes any size (most convolutional networks; ViT, DeiT, EVA or Swin transformers)"
        ) from None
    finally:
        backbone.train(training)


def view_transform(cfg):
    """lightly's multi-view transform of the method, with the config's augmentation choices."""
    from lightly.transforms import (
        BYOLTransform,
        BYOLView1Transform,
        BYOLView2Transform,
        DINOTransform,
        MoCoV2Transform,
        SimCLRTransform,
        SimSiamTransform,
        SwaVTransform,
    )

    data, method, views = cfg.data, cfg.ssl.method, cfg.ssl.views
    size = data.image_size
    common = {"normalize": {"mean": list(data.mean), "std": list(data.std)}}
    for ours, theirs in (
        ("hflip", "hf_prob"),
        ("vflip", "vf_prob"),
        ("rotate", "rr_prob"),
        ("rotate_degrees", "rr_degrees"),
        ("color_jitter", "cj_prob"),
        ("jitter_strength", "cj_strength"),
        ("grayscale", "random_gray_scale"),
    ):
        if getattr(views, ours) is not None:
            common[theirs] = getattr(views, ours)
    local_views, local_size = local_crops(cfg)
    blur = {} if views.blur is None else {"gaussian_blur": views.blur}
    scale = {} if views.min_scale is None else {"min_scale": views.min_scale}
    if method == "simclr":
        return SimCLRTransform(input_size=size, **scale, **blur, **common)
    if method == "moco_v2":
        return MoCoV2Transform(input_size=size, **scale, **blur, **common)
    if method == "simsiam":
        return SimSiamTransform(input_size=size, **scale, **blur, **common)
    if method in ("byol", "moco_v3", "barlow_twins"):  # the asymmetric BYOL views, as in their papers
        return BYOLTransform(
            BYOLView1Transform(input_size=size, **scale, **blur, **common),
            BYOLView2Transform(input_size=size, **scale, **blur, **common),
        )
    if method == "swav":
        low = views.min_scale or 0.14
        return SwaVTransform(
            crop_sizes=(size, local_size),
            crop_counts=(2, local_views),
            crop_min_scales=(low, 0.05),
            crop_max_scales=(1.0, low),
            **blur,
            **common,
        )
    global_scale = (views.min_scale or 0.4, 1.0)
    dino_blur = {} if views.blur is None else {"gaussian_blur": (views.blur, views.blur, views.blur)}
    return DINOTransform(
        global_crop_size=size,
        global_crop_scale=global_scale,
        local_crop_size=local_size,
        local_crop_scale=(0.05, global_scale[0]),
        n_local_views=local_views,
        **dino_blur,
        **common,
    )
