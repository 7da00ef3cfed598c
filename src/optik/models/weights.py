"""Initialise a model from a local weights file: find the state_dict, match prefixes, report keys."""

from __future__ import annotations

import pickle
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from optik.errors import ModelError

# Wrappers that put a prefix in front of every key: DataParallel/DDP, Lightning modules, SSL models.
KNOWN_PREFIXES = ("module.", "model.", "backbone.", "encoder.", "ema.module.", "state_dict.")


def read_checkpoint(path: str | Path) -> dict:
    """The raw contents of a weights file (torch or safetensors), loaded with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.stat().st_size == 0:
        raise ModelError(f"{path} is empty (0 bytes), not a weights file")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"cannot load {path}: {unreadable_reason(path, exc)}") from None
    if not isinstance(content, dict):
        raise ModelError(f"{path} holds a {type(content).__name__}, not a state_dict or checkpoint")
    return content


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6 is a zip archive
PICKLE_MAGIC = b"\x80"  # the legacy torch.save format, and plain pickles, start with the PROTO opcode


def unreadable_reason(path: Path, exc: Exception) -> str:
    """Why torch.load refused a file, in the user's terms: cut short, unsafe to load, or no PyTorch file at all."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    message = str(exc)
    wanted = "give a model.pt, a .ckpt, a state_dict .pth or a .safetensors file"
    if not head.startswith((ZIP_MAGIC, PICKLE_MAGIC)):
        kind = "a text file" if _looks_like_text(head) else f"a file starting with {head[:8]!r}"
        return f"it is {kind}, not a PyTorch or optik model file; {wanted}"
    truncated = (
        "the file is truncated ({}: cut short while saving or copying); copy it again, or take the run's "
        "model.pt or checkpoints/last.ckpt again"
    )
    if "central directory" in message or "PytorchStreamReader" in message:
        return truncated.format("its zip archive has lost its end, the central directory")
    if "Weights only load failed" in message:
        return f"it holds Python objects that are not safe to load (only tensors and plain values are); {wanted}"
    if isinstance(exc, EOFError | pickle.UnpicklingError):
        return truncated.format("its data stops early")
    return f"it is a damaged PyTorch file ({message.splitlines()[0][:120]}); {wanted}"


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\t\r\n" for ch in text)


def extract_state_dict(content: dict) -> dict[str, torch.Tensor]:
    """The tensors of a state_dict, Lightning checkpoint, optik package or {'model': ...} wrapper."""
    for key in ("state_dict", "model", "model_state_dict", "module"):
        inner = content.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return inner
    tensors = {k: v for k, v in content.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelError(f"no tensors found (top-level keys: {', '.join(list(content)[:8])})")
    return tensors


@dataclass
class KeyReport:
    """What a weights load did: keys matched, missing from the file, unexpected, or of the wrong shape."""

    source: str
    prefix: str
    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    total: int = 0  # keys of the model

    def lines(self, limit: int = 8) -> list[str]:
        total = self.total
        out = [
            f"weights {self.source}"
            + (f" (prefix {self.prefix!r} stripped)" if self.prefix else "")
            + f": {len(self.matched)}/{total} model keys matched"
        ]
        for label, keys in (
            ("missing (left as initialised)", self.missing),
            ("unexpected (ignored)", self.unexpected),
            ("shape mismatch (left as initialised)", self.mismatched),
        ):
            if keys:
                shown = ", ".join(keys[:limit]) + (f", ... {len(keys) - limit} more" if len(keys) > limit else "")
                out.append(f"  {label}: {len(keys)}: {shown}")
        return out


def candidate_prefixes(keys: list[str]) -> list[str]:
    """'' plus every dotted prefix (1-2 components) that many keys share, and the known wrapper prefixes."""
    counts: Counter[str] = Counter()
    for key in keys:
        parts = key.split(".")
        for depth in (1, 2):
            if len(parts) > depth:
                counts[".".join(parts[:depth]) + "."] += 1
    shared = [p for p, n in counts.items() if n >= max(2, len(keys) // 10)]
    return list(dict.fromkeys(["", *KNOWN_PREFIXES, *shared]))


def select_prefix(
    state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], prefix: str | None
) -> tuple[str, dict[str, torch.Tensor]]:
    """Strip the given prefix, or the one under which most keys match the model's."""

    def stripped(p: str) -> dict[str, torch.Tensor]:
        return {k[len(p) :]: v for k, v in state.items() if k.startswith(p)}

    if prefix is not None:
        chosen = stripped(prefix)
        if not chosen:
            raise ModelError(
                f"no key starts with model.weights_prefix {prefix!r} (keys look like {next(iter(state))!r})"
            )
        return prefix, chosen
    best = max(candidate_prefixes(list(state)), key=lambda p: sum(1 for k in stripped(p) if k in target))
    return best, stripped(best)


def load_weights(model: nn.Module, path: str | Path, prefix: str | None = None) -> KeyReport:
    """Load matching tensors from a local file into `model` (not strict), and say what matched."""
    return load_state(model, extract_state_dict(read_checkpoint(path)), str(path), prefix)


def count_matching(state: dict[str, torch.Tensor], model: nn.Module, prefix: str | None = None) -> int:
    """How many tensors of `state` would load into `model` (name and shape agree, best prefix)."""
    target = model.state_dict()
    try:
        _, chosen = select_prefix(state, target, prefix)
    except ModelError:
        return 0
    return sum(1 for k, v in chosen.items() if k in target and target[k].shape == v.shape)


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str, prefix: str | None = None) -> KeyReport:
    """Load the tensors of `state` that fit `model` (not strict); the report names the rest."""
    target = model.state_dict()
    used, chosen = select_prefix(state, target, prefix)
    report = KeyReport(source=source, prefix=used, total=len(target))
    loadable = {}
    for key, value in chosen.items():
        if key not in target:
            report.unexpected.append(key)
        elif target[key].shape != value.shape:
            report.mismatched.append(f"{key} {tuple(value.shape)}->{tuple(target[key].shape)}")
        else:
            loadable[key] = value
            report.matched.append(key)
    report.missing = [
        k for k in target if k not in loadable and not any(m.startswith(k + " ") for m in report.mismatched)
    ]
    if not loadable:
        raise ModelError(
            f"no key of {source} matches the model (file keys look like {next(iter(state))!r}, model keys like {next(iter(target))!r}); set model.weights_prefix"
        )
    model.load_state_dict(loadable, strict=False)
    return report
