"""From a data config to checked datasets and DataLoaders for train / val / test."""

from __future__ import annotations

import random
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from optik.data.classes import configured_classes, match_classes
from optik.data.decode import open_image
from optik.data.folder import Sample, Splits, complete_splits, find_images, folder_splits
from optik.data.images import check_images, listed_bad, refuse_or_skip
from optik.data.listfile import read_list, read_paths
from optik.data.transforms import Preprocess, eval_transform, train_transform
from optik.errors import DataError

TORCHVISION_SETS = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


def seed_sample(seed: int, epoch: int, index: int) -> None:
    """Seed the RNGs an augmentation uses from (seed, epoch, sample index).

    Each sample's augmentation then depends on nothing else (not on worker count, batch order or
    what ran before), so a resumed run redoes an interrupted epoch exactly.
    """
    value = hash((seed, epoch, index)) & 0xFFFFFFFF
    random.seed(value)
    np.random.seed(value)
    torch.default_generator.manual_seed(value)  # CPU only: torch.manual_seed also visits every device (100x slower)


def seeded_index(key: int | tuple[int, int], seed: int | None) -> int:
    """The sample index of a sampler key (`index` or `(index, epoch)`), seeding its augmentation."""
    index, epoch = key if isinstance(key, tuple) else (key, 0)
    if seed is not None:
        seed_sample(seed, epoch, index)
    return index


class ImageDataset(Dataset):
    """(image path, label) samples decoded through `open_image` and transformed.

    With `seed` set (training), augmentation is seeded per sample and epoch (see `seed_sample`);
    `exif_orientation` is `data.exif_orientation` (see `open_image`).
    """

    def __init__(self, samples: list[Sample], transform, seed: int | None = None, exif_orientation: bool = True):
        self.samples = samples
        self.transform = transform
        self.seed = seed
        self.exif_orientation = exif_orientation

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]):
        index = seeded_index(key, self.seed)
        path, label = self.samples[index]
        return self.transform(open_image(path, exif_orientation=self.exif_orientation)), label

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.samples]


class TorchvisionImages(Dataset):
    """A torchvision dataset (CIFAR, MNIST, ...) as RGB images through our transforms."""

    def __init__(self, dataset, transform, seed: int | None = None):
        self.dataset = dataset
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]):
        index = seeded_index(key, self.seed)
        image, label = self.dataset[index]
        return self.transform(image.convert("RGB")), int(label)

    @property
    def labels(self) -> list[int]:
        return [int(t) for t in self.dataset.targets]


class EpochSampler(Sampler[tuple[int, int]]):
    """An epoch's order that depends only on (seed, epoch), so a resumed run sees the same order.

    It yields (index, epoch) pairs: the dataset seeds each sample's augmentation from them,
    whatever process or moment the sample is loaded in. The epoch is the one last given to
    `set_epoch`; an iteration started before any `set_epoch` call (Lightning builds the first
    iterator early, also when resuming) counts on from `start_epoch`.

    Under DDP every process draws the same order, and Lightning's sampler wrapper
    (`use_distributed_sampler`, see `engine.train.build_trainer`) hands each process its own
    positions of it: disjoint shares of one draw.
    """

    def __init__(self, size: int, seed: int, start_epoch: int = 0):
        self.size, self.seed = size, seed
        self.epoch = start_epoch
        self._given: int | None = None  # set_epoch value not yet used by an iteration

    def set_epoch(self, epoch: int) -> None:
        self._given = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        if self._given is not None:
            self.epoch, self._given = self._given, None
        epoch = self.epoch
        self.epoch += 1  # what the next iteration uses unless set_epoch says otherwise
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return iter([(index, epoch) for index in self.draw(generator)])

    def draw(self, generator: torch.Generator) -> list[int]:
        raise NotImplementedError


class EpochShuffleSampler(EpochSampler):
    """Every sample once per epoch, shuffled."""

    def draw(self, generator: torch.Generator) -> list[int]:
        return torch.randperm(self.size, generator=generator).tolist()


class BalancedSampler(EpochSampler):
    """As many draws per epoch as there are samples, with replacement, each class equally likely
    (`data.sampler: balanced`): a minority class is seen as often as the largest one."""

    def __init__(self, labels: list[int], seed: int, start_epoch: int = 0):
        super().__init__(len(labels), seed, start_epoch)
        labels_t = torch.tensor(labels)
        counts = torch.bincount(labels_t).double()
        self.weights = 1.0 / counts[labels_t]

    def draw(self, generator: torch.Generator) -> list[int]:
        return torch.multinomial(self.weights, self.size, replacement=True, generator=generator).tolist()


@dataclass
class ClassifyData:
    """The datasets of one run, with their class names and where they came from."""

    classes: list[str]
    datasets: dict[str, Dataset]
    origin: dict[str, str]
    skipped: list[str]


def read_splits(data) -> Splits:
    """Samples of a folder or list dataset, with class names resolved (config, env, or the data)."""
    named, origin = configured_classes(data.classes)
    if data.format == "folder":
        if data.root is None:
            raise DataError("data.root is not set: give the dataset folder (e.g. --set data.root=path/to/images)")
        return folder_splits(data.root, named, origin, data.val_split, data.split_seed)
    train, classes = read_list(data.train_list, data.root, named)
    splits = Splits(classes=classes, train=train, origin={"train": str(data.train_list)})
    for name, list_file in (("val", data.val_list), ("test", data.test_list)):
        if list_file is not None:
            setattr(splits, name, read_list(list_file, data.root, classes)[0])
            splits.origin[name] = str(list_file)
    return complete_splits(splits, data.val_split, data.split_seed)


def drop_bad(splits: Splits, mode: str, skip_bad: bool, hint: str = "set data.skip_bad: true") -> dict[str, str]:
    """Check every image once; fail listing the bad ones, or leave them out when skip_bad (`hint`: how the
    user asks for that). The images left out, path -> why.

    Leaving out every training image is an error (how many, and why) rather than a run that trains on nothing.
    """
    paths = sorted({path for name in ("train", "val", "test") for path, _ in splits.get(name)})
    bad = refuse_or_skip(check_images(paths, mode), skip_bad, hint=hint)
    train_bad = {path: bad[path] for path, _ in splits.train if path in bad}
    if splits.train and len(train_bad) == len(splits.train):
        raise DataError(
            f"no training images left: data.skip_bad left out all {len(train_bad)} training image(s) of "
            f"{splits.origin.get('train', 'the data')} as unreadable ({listed_bad(train_bad)}); fix or replace them"
        )
    for name in ("train", "val", "test"):
        setattr(splits, name, [s for s in splits.get(name) if s[0] not in bad])
    return bad


def build_classify_data(data, seed: int | None = None) -> ClassifyData:
    """Datasets for train/val/test with their transforms; images checked before training starts."""
    evaluation = eval_transform(Preprocess.from_data_config(data))
    if data.format in TORCHVISION_SETS:
        return _torchvision_data(data, evaluation, seed)
    splits = read_splits(data)
    skipped = sorted(drop_bad(splits, data.verify, data.skip_bad))
    if not splits.train:
        raise DataError("no training images left after leaving out unreadable ones")
    upright = data.exif_orientation
    datasets = {"train": ImageDataset(splits.train, train_transform(data), seed, upright)}
    for name in ("val", "test"):
        datasets[name] = ImageDataset(splits.get(name), evaluation, exif_orientation=upright)
    return ClassifyData(splits.classes, datasets, splits.origin, skipped)


def build_pretrain_data(data, transform, seed: int | None = None) -> tuple[ImageDataset, list[str]]:
    """The unlabelled training set (every image below `data.root`, or the paths of `data.lists`), each
    image turned into its views by `transform`; and the unreadable images left out."""
    if data.format == "folder":
        if data.root is None or not Path(data.root).is_dir():
            raise DataError(
                f"data.root is not an image folder: {data.root}; give the folder of unlabelled images (--set data.root=path)"
            )
        paths = [str(p) for p in find_images(data.root)]
        if not paths:
            raise DataError(f"no images found below {data.root}")
    else:
        paths = sorted({path for list_file in data.lists for path in read_paths(list_file, data.root)})
    bad = refuse_or_skip(check_images(paths, data.verify), data.skip_bad)
    samples = [(path, 0) for path in paths if path not in bad]
    if len(samples) < data.batch_size:
        raise DataError(
            f"{len(samples)} images for a batch size of {data.batch_size}; pretraining needs at least one full batch (lower data.batch_size)"
        )
    return ImageDataset(samples, transform, seed, data.exif_orientation), sorted(bad)


def _torchvision_data(data, evaluation, seed: int | None) -> ClassifyData:
    import torchvision.datasets as tvd

    if data.root is None:
        raise DataError(f"data.root is not set: give the folder that holds (or will hold) the {data.format} files")
    cls = getattr(tvd, TORCHVISION_SETS[data.format])
    try:
        train = cls(str(data.root), train=True, download=data.download)
        test = cls(str(data.root), train=False, download=data.download)
    except RuntimeError as exc:
        raise DataError(
            f"{data.format} files not found under {data.root} ({exc}); set data.download: true to fetch them when online"
        ) from None
    named, origin = configured_classes(data.classes)
    classes = (
        match_classes(named, origin, list(train.classes), f"the {data.format} classes")
        if named
        else list(train.classes)
    )
    if named and classes != list(train.classes):
        raise DataError(f"{origin} must list the {data.format} classes in their standard order: {list(train.classes)}")
    datasets = {
        "train": TorchvisionImages(train, train_transform(data), seed),
        "val": TorchvisionImages(test, evaluation),
        "test": TorchvisionImages(test, evaluation),
    }
    where = str(Path(data.root))
    return ClassifyData(
        classes, datasets, {"train": where, "val": f"{where} (test set)", "test": f"{where} (test set)"}, []
    )


def make_loader(
    dataset: Dataset,
    batch_size: int,
    workers: int,
    shuffle_seed: int | None = None,
    drop_last: bool = False,
    start_epoch: int = 0,
    collate_fn=None,
    sampler: Sampler | None = None,
) -> DataLoader:
    """A DataLoader; with `shuffle_seed` the order is reshuffled per epoch from (seed, epoch); a `sampler`
    (such as `BalancedSampler`) chooses the order instead."""
    if sampler is None and shuffle_seed is not None:
        sampler = EpochShuffleSampler(len(dataset), shuffle_seed, start_epoch)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_fn,
        worker_init_fn=ignore_stop_signals if workers else None,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        persistent_workers=False,  # fresh workers per epoch take their seeds from the per-epoch RNG
    )


def ignore_stop_signals(worker_id: int) -> None:
    """A DataLoader worker leaves Ctrl-C and SIGTERM to the main process, which stops training cleanly;
    a worker killed by the signal would otherwise end training with a RuntimeError."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
