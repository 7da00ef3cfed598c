"""Published weights when the hub cannot be reached: one clear error at once, not a minute of retries."""

import socket

import pytest

from optik.errors import ModelError
from optik.models.classify import build_timm
from optik.models.hub import hub_offline, hub_reachable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_reachable_is_a_real_connection(monkeypatch):
    with socket.socket() as server:  # something listens: reachable
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub_reachable()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens: refused at once
    assert not hub_reachable()


def test_offline_mode_is_set_within_and_restored_after():
    from huggingface_hub import constants

    before = constants.is_offline_mode()
    with hub_offline(True):
        assert constants.is_offline_mode()
    assert constants.is_offline_mode() == before


def test_pretrained_weights_without_the_hub_fail_at_once_with_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ModelError) as error:  # a tag nobody has in a cache; no download is tried
        build_timm("resnet18.fb_swsl_ig1b_ft_in1k", 3, 32, True, 0.0, 0.0)
    said = str(error.value)
    assert "cannot be reached and they are not in the local cache" in said and "model.pretrained: false" in said
