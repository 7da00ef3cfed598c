"""`optik flops`: torch's counter gives the figures model zoos quote, and a per-module table."""

import re

import pytest


def test_resnet50_at_224_is_4_1_gmacs_and_25_6_m_parameters(optik):
    done = optik("flops", "resnet50")
    assert done.returncode == 0, done.stderr
    macs, params = map(float, re.search(r"([\d.]+) GMACs .* ([\d.]+) M parameters", done.stdout).groups())
    assert macs == pytest.approx(4.1, rel=0.02) and params == pytest.approx(25.6, rel=0.02)
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines()[2:]}
    assert {"conv1", "layer1", "layer4", "fc"} <= set(rows)
    assert sum(float(r[2]) for r in rows.values() if "." not in r[0]) == pytest.approx(macs, rel=0.01)


def test_a_detector_config_prints_its_table(optik):
    done = optik("flops", "fcos_resnet18_small", "--shape", "128", "128", "--num-classes", "3")
    assert done.returncode == 0, done.stderr
    assert re.search(r"at 128x128: [\d.]+ GMACs", done.stdout)
    names = [line.split()[0] for line in done.stdout.splitlines()[2:]]
    assert "backbone" in names and "head" in names


def test_unknown_model_is_a_clear_error(optik):
    done = optik("flops", "resnet_9000")
    assert done.returncode == 2 and "timm architecture" in done.stderr and "Traceback" not in done.stderr
