# optik on the CPU. Build: docker build -t optik .   Run: docker run --rm optik --help
# docs/docker.md gives the run options (volumes, user, shared memory, caches).
FROM python:3.11-slim

# The pair pinned in pyproject.toml (tests/test_docker_files.py keeps them equal), as CPU-only
# wheels: the default index would pull gigabytes of CUDA libraries this image cannot use.
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv \
 && pip install --index-url "$TORCH_INDEX" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"

# Dependencies first, from pyproject.toml alone (an empty package stands in for src/), so that
# a change to the code does not reinstall them.
COPY pyproject.toml README.md /opt/optik/
RUN mkdir -p /opt/optik/src/optik \
 && touch /opt/optik/src/optik/__init__.py \
 && pip install /opt/optik \
 && pip uninstall --yes optik \
 && rm -rf /opt/optik/src /opt/optik/build

COPY src /opt/optik/src
RUN pip install --no-deps /opt/optik \
 && rm -rf /opt/optik \
 && python -c "import torch, torchvision.ops, cv2, optik.cli; assert torch.version.cuda is None, 'a CUDA build of torch got in'; print('torch', torch.__version__)"

# Any user (docker run -u "$(id -u):$(id -g)") can write the caches, the home and the work folder.
# Mount a volume on /cache to keep downloaded weights and compiled kernels between runs.
ENV HOME=/home/optik \
    USER=optik \
    XDG_CACHE_HOME=/cache \
    TORCH_HOME=/cache/torch \
    HF_HOME=/cache/huggingface \
    MPLCONFIGDIR=/cache/matplotlib \
    TORCHINDUCTOR_CACHE_DIR=/cache/torchinductor \
    TRITON_CACHE_DIR=/cache/triton
RUN useradd --uid 1000 --user-group --create-home --home-dir /home/optik --shell /usr/sbin/nologin optik \
 && mkdir -p /cache /workspace \
 && chmod 1777 /cache /workspace /home/optik

# Numeric, so that Kubernetes' runAsNonRoot can check it: uid 1000 is the user optik.
USER 1000:1000
WORKDIR /workspace
ENTRYPOINT ["optik"]
CMD ["--help"]
