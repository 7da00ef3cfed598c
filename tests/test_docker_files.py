"""The Dockerfiles, read as Docker reads them: optik as the entry point, a non-root user, torch as pinned, a build context that holds what they copy."""

import json
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = ["Dockerfile", "Dockerfile.cuda"]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continued lines joined."""
    joined, parts = [], []
    for line in path.read_text().splitlines():
        if not parts and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        parts.append(line.rstrip().removesuffix("\\").strip())
        if not line.rstrip().endswith("\\"):
            joined.append(" ".join(parts))
            parts = []
    return [(text.split(maxsplit=1)[0].upper(), text.split(maxsplit=1)[1]) for text in joined]


def args_of(found: list[tuple[str, str]]) -> dict[str, str]:
    """The default of every ARG, before and after FROM."""
    return dict(value.split("=", 1) for op, value in found if op == "ARG" and "=" in value)


def pins() -> dict[str, str]:
    text = (REPO / "pyproject.toml").read_text()
    return dict(re.findall(r'"(torch|torchvision)==([^"]+)"', text))


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (the last matching pattern wins; a folder's match covers its files)."""
    verdict = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = "".join(
            ".*" if tok == "**" else "[^/]*" if tok == "*" else "[^/]" if tok == "?" else re.escape(tok)
            for tok in re.split(r"(\*\*|\*|\?)", pattern)
        )
        parts = path.split("/")
        if any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            verdict = not negated
    return verdict


def dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_entry_point_user_and_caches(name):
    found = instructions(REPO / name)
    last = {op: value for op, value in found}
    assert json.loads(last["ENTRYPOINT"]) == ["optik"] and json.loads(last["CMD"]) == ["--help"]
    user = last["USER"].split(":")[0]
    assert user not in ("root", "0") and [op for op, _ in found].index("USER") > max(
        i for i, (op, _) in enumerate(found) if op == "RUN"
    )
    assert last["WORKDIR"] == "/workspace"
    env = " ".join(value for op, value in found if op == "ENV")
    for var in ("TORCH_HOME", "HF_HOME", "XDG_CACHE_HOME"):
        assert re.search(rf"\b{var}=/cache\b", env), var
    assert any("chmod 1777 /cache" in value for op, value in found if op == "RUN")  # writable by whatever uid -u gives


@pytest.mark.parametrize("name", DOCKERFILES)
def test_torch_as_pinned_in_pyproject(name):
    args = args_of(instructions(REPO / name))
    assert pins() == {"torch": args["TORCH_VERSION"], "torchvision": args["TORCHVISION_VERSION"]}
    runs = " ".join(value for op, value in instructions(REPO / name) if op == "RUN")
    assert '--index-url "$TORCH_INDEX" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"' in runs


def test_cpu_wheels_and_a_cuda_base_that_matches_the_wheels():
    assert args_of(instructions(REPO / "Dockerfile"))["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    cuda = args_of(instructions(REPO / "Dockerfile.cuda"))
    major, minor = re.fullmatch(
        r"nvidia/cuda:(\d+)\.(\d+)\.\d+-cudnn-runtime-ubuntu\d+\.\d+", cuda["CUDA_IMAGE"]
    ).groups()
    assert major == "12" and cuda["TORCH_INDEX"] == f"https://download.pytorch.org/whl/cu{major}{minor}"
    assert instructions(REPO / "Dockerfile")[0] == ("FROM", "python:3.11-slim")
    assert any(
        "python3.11 -m venv /opt/venv" in value for op, value in instructions(REPO / "Dockerfile.cuda") if op == "RUN"
    )


@pytest.mark.parametrize("name", DOCKERFILES)
def test_what_is_copied_is_in_the_build_context(name):
    patterns = dockerignore()
    for op, value in instructions(REPO / name):
        if op != "COPY":
            continue
        words = [w for w in shlex.split(value) if not w.startswith("--")]
        for source in words[:-1]:
            assert (REPO / source).exists(), source
            assert not ignored(source, patterns), f"{source} is left out by .dockerignore"
    assert not ignored("src/optik/cli/__init__.py", patterns) and not ignored(
        "src/optik/config/presets/resnet18_small.yaml", patterns
    )


def test_dockerignore_leaves_out_venv_git_and_runs():
    patterns = dockerignore()
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "work_dirs/run/model.pt",
        "demo_run/x",
        "src/optik/__pycache__/cli.cpython-311.pyc",
        "data/train/cat/1.jpg",
    ):
        assert ignored(path, patterns), path
