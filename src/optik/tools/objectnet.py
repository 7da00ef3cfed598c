"""ObjectNet-style batch prediction (`optik batch-predict`) and the challenge's scoring (`optik objectnet score`)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from optik.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass
class BatchJob:
    """What `optik batch-predict` was asked to do."""

    images: Path
    out: Path
    model: str | None = None
    model_class: str | None = None
    checkpoint: str | None = None
    transform: str | None = None
    border_crop: int = 0
    fmt: str = "objectnet"
    top_k: int = 5
    softmax: bool = True
    convert_outputs_mode: int = 0
    objectnet_mappings: Path | None = None
    batch_size: int = 32
    workers: int | None = None
    device: str = "auto"
    precision: str = "32"
    optimize: str = "auto"
    resume: bool = False
    backend: str = "auto"  # auto, torch, onnxruntime or openvino (see `optik.inference.runtime.plan`)
    tta: str | None = None  # test-time augmentation; None: the one the model records (none for plug-ins)
    calibration: Path | None = None  # images to quantize on, for precision int8


@dataclass
class BatchReport:
    rows: int = 0
    predicted: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    first_batch: tuple[int, float] = (0, 0.0)  # images and seconds of the first batch (compiling happens there)

    def steady_rate(self) -> float:
        """Images/s after the first batch: the speed of a long job, without the one-time set-up."""
        images, seconds = self.predicted - self.first_batch[0], self.seconds - self.first_batch[1]
        return images / seconds if seconds > 0 and images > 0 else self.predicted / max(self.seconds, 1e-9)


def batch_predict(job: BatchJob, progress: bool = True) -> BatchReport:
    """Predict every image below `job.images` into `job.out`; under torchrun each rank takes a shard and
    rank 0 merges the rows in sorted order. Returns this rank's report (rank 0: with the row count)."""
    from optik.inference.batch import calibration_batches, find_flat_images, load_transform, predict_folder
    from optik.inference.runtime import RuntimeBackend, check_engine
    from optik.outputs.objectnet import FORMATS, PartWriter, merge_rows
    from optik.tasks.loading import load_batch_model

    if job.fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}")
    if job.fmt == "objectnet" and job.top_k > 5:
        raise ConfigError(
            "the ObjectNet format has at most 5 predictions per row; use --top-k 5 or less, or --format csv/jsonl"
        )
    if job.convert_outputs_mode == 1 and job.objectnet_mappings is None:
        raise ConfigError(
            "--convert-outputs-mode 1 needs --objectnet-mappings DIR (the ObjectNet dataset's mappings/ folder)"
        )
    files = find_flat_images(job.images)
    if job.fmt == "objectnet" and any("," in f.name for f in files):
        raise DataError(
            "an image name contains a comma, which the ObjectNet CSV cannot hold; use --format csv or jsonl"
        )
    rank, world = _start_distributed(job.device)
    bundle = load_batch_model(job.model, job.model_class, job.checkpoint, job.precision)
    if job.transform is not None:
        bundle.transform = load_transform(job.transform)
    id_map, labels = _id_map(job, bundle)
    mine = _my_share(job, files, rank, world)
    if bundle.runtime is not None:  # an exported file: its engine, or an error for options it cannot honour
        if job.backend not in ("auto", bundle.runtime.engine):
            raise ConfigError(
                f"{job.model} is an exported {bundle.runtime.engine} model: it runs with --backend {bundle.runtime.engine}; "
                "for another backend give the model.pt it was exported from"
            )
        check_engine(bundle.runtime.engine, job.device, job.precision, job.optimize)
    device = bundle.runtime.device if bundle.runtime is not None else _rank_device(job.device, rank, world)
    calibration = None
    if job.calibration is not None:
        calibration = calibration_batches(bundle, job.calibration, job.batch_size)
    backend = RuntimeBackend(
        bundle.model,
        device=str(device),
        precision=job.precision,
        mode=job.optimize,
        batch_size=job.batch_size,
        expected_images=len(mine) * world,
        backend=job.backend,
        tta=test_time_augmentation(job, bundle),
        calibration=calibration,
        runtime=bundle.runtime,
    )
    part = job.out.with_name(f"{job.out.name}.part-{rank}")
    report = BatchReport(skipped=len(files[rank::world]) - len(mine))
    workers = job.workers if job.workers is not None else default_workers(device)
    writer, started = PartWriter(part, job.fmt), time.perf_counter()
    bar = _progress(len(mine), progress and rank == 0)
    try:
        for predictions, failures in predict_folder(
            bundle, mine, backend, job.batch_size, workers, job.top_k, job.softmax, job.border_crop
        ):
            rows = [_row(mine[p.index].name, p, id_map, labels) for p in predictions]
            writer.write(rows)
            if report.predicted == 0:
                report.first_batch = (len(rows), time.perf_counter() - started)
            report.predicted += len(rows)
            report.failures += [(str(mine[i]), reason) for i, reason in failures]
            bar.update(len(rows) + len(failures))
    finally:
        writer.close()
        bar.close()
    report.seconds = time.perf_counter() - started
    report.failures = _gather_failures(report.failures, world)
    _barrier(world)
    if rank == 0:
        report.rows = merge_rows(job.out, job.fmt, job.top_k, labels is not None)
    _stop_distributed(world)
    return report


def test_time_augmentation(job: BatchJob, bundle) -> str:
    """`--tta` if given, else what the model package or exported file records."""
    if job.tta is not None:
        return job.tta
    return bundle.preprocess.tta if bundle.preprocess is not None else "none"


def _my_share(job: BatchJob, files: list, rank: int, world: int) -> list:
    """This rank's files (every world-th), less those already in the output when resuming.

    Without --resume, old part files and the old output are cleared first (each rank its own
    part; rank 0 the output and parts of ranks that no longer exist).
    """
    from optik.outputs.objectnet import done_rows, part_files

    if not job.resume:
        job.out.with_name(f"{job.out.name}.part-{rank}").unlink(missing_ok=True)
        if rank == 0:
            job.out.unlink(missing_ok=True)
            for stale in part_files(job.out):
                if int(stale.name.rsplit("-", 1)[-1]) >= world:
                    stale.unlink()
    _barrier(world)
    done = set(done_rows([job.out, *part_files(job.out)], job.fmt)) if job.resume else set()
    return [f for f in files[rank::world] if f.name not in done]


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers(device: torch.device) -> int:
    """Loader processes per rank: on a CPU half its cores (the model needs the rest), on a GPU most of them."""
    share = max(1, cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return min(8, max(1, share - 1)) if device.type == "cuda" else min(4, max(1, share // 2))


def _row(name: str, prediction, id_map: np.ndarray | None, labels: list[str] | None):
    """A prediction as an output row: ids mapped (mode 1, unmapped -1) and named when names are known."""
    from optik.outputs.objectnet import Row

    ids = prediction.ids if id_map is None else [int(id_map[i]) if i < len(id_map) else -1 for i in prediction.ids]
    return Row(
        name, ids, prediction.scores, [labels[i] if 0 <= i < len(labels) else "" for i in ids] if labels else None
    )


def _id_map(job: BatchJob, bundle) -> tuple[np.ndarray | None, list[str] | None]:
    """Mode 1: PyTorch ImageNet index -> ObjectNet id (and ObjectNet labels); mode 0: none (and class names)."""
    if job.convert_outputs_mode == 1:
        from optik.data.objectnet import objectnet_labels, pytorch_to_objectnet

        return pytorch_to_objectnet(job.objectnet_mappings), (
            objectnet_labels(job.objectnet_mappings) if job.fmt != "objectnet" else None
        )
    if job.convert_outputs_mode != 0:
        raise ConfigError("--convert-outputs-mode is 0 (ids as the model gives them) or 1 (ImageNet -> ObjectNet)")
    return None, (bundle.classes if job.fmt != "objectnet" else None)


def _start_distributed(device: str) -> tuple[int, int]:
    """(rank, world size): torchrun's environment, or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and device != "cpu" else "gloo"
        if backend == "nccl":  # one GPU per process, set before NCCL starts
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        torch.distributed.init_process_group(backend=backend)
        if backend == "gloo":  # share the CPU cores between the processes
            torch.set_num_threads(max(1, cores() // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    return rank, world


def _rank_device(device: str, rank: int, world: int) -> torch.device:
    from optik.inference.runtime import pick_device

    chosen = pick_device(device)
    if chosen.type == "cuda" and world > 1 and chosen.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    return chosen


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def _gather_failures(failures: list, world: int) -> list:
    if world == 1:
        return failures
    gathered: list = [None] * world
    torch.distributed.all_gather_object(gathered, failures)
    return [item for part in gathered for item in part]


def _stop_distributed(world: int) -> None:
    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    # None: off when not a terminal
    return tqdm(
        total=total,
        unit="img",
        desc="batch-predict",
        disable=None if enabled else True,
        dynamic_ncols=True,
        smoothing=0.1,
    )
