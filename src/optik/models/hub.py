"""Published weights from the Hugging Face hub (where timm fetches them): fail at once when it cannot be reached."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit


def hub_endpoint() -> str:
    """The Hugging Face hub timm fetches published weights from ($HF_ENDPOINT, else huggingface.co)."""
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub answers a TCP connection within `timeout` s (no network: at once, as DNS fails)."""
    url = urlsplit(hub_endpoint())
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


@contextmanager
def hub_offline(offline: bool) -> Iterator[None]:
    """Within: the hub library in offline mode when `offline` (it reads only its cache), so a download that
    cannot succeed fails at once instead of after a minute of retries; as before afterwards."""
    if not offline:
        yield
        return
    from huggingface_hub import constants

    before, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True  # read at call time (`is_offline_mode`)
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def why_unavailable(exc: Exception, offline: bool) -> str:
    """Why published weights could not be had, for an error message."""
    return f"{hub_endpoint()} cannot be reached and they are not in the local cache" if offline else type(exc).__name__
