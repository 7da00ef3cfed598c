"""`optik serve poll`: every image gets exactly one output or error record, whatever happens to the process."""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import struct
import time
import zlib
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from conftest import COLOURS, Served, colour_image, jpeg_with_thumbnail, run_optik
from service_helpers import Service

CLASSES = ["red", "green", "blue"]


def drop_images(folder: Path, count: int, ext: str = ".jpg", seed: int = 0, size: int = 40) -> dict[str, str]:
    """`count` colour images named `<n>_<colour><ext>`; name -> true colour."""
    folder.mkdir(parents=True, exist_ok=True)
    rng, truth = np.random.default_rng(seed), {}
    for i in range(count):
        colour = list(COLOURS)[i % 3]
        name = f"{i:04d}_{colour}{ext}"
        colour_image(COLOURS[colour], size, rng).save(folder / name)
        truth[name] = colour
    return truth


def png_with_size(width: int, height: int) -> bytes:
    """A valid PNG whose header declares width x height (the pixel data is tiny)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 4)) + chunk(b"IEND", b"")
    )


def broken_images(folder: Path) -> list[str]:
    """15 broken files, three of each kind a user drops by mistake."""
    good = io.BytesIO()
    colour_image(COLOURS["red"], 64, np.random.default_rng(1)).save(good, format="JPEG")
    png = io.BytesIO()
    colour_image(COLOURS["blue"], 64, np.random.default_rng(2)).save(png, format="PNG")
    kinds = {
        "truncated.jpg": good.getvalue()[: len(good.getvalue()) // 2],
        "zero.jpg": b"",
        "text.jpg": b"this is a text file, not a photo\n",
        "cut.png": png.getvalue()[: png.getvalue().rindex(b"IEND") - 4],
        "huge.png": png_with_size(30000, 30000),
    }
    names = []
    for i in range(3):
        for kind, data in kinds.items():
            names.append(f"broken{i}_{kind}")
            (folder / names[-1]).write_bytes(data)
    return names


def outputs(folder: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in folder.glob("*.json")}


def serve_poll(model: Path, in_dir: Path, out_dir: Path, *args: str, optimize: str = "fused", timeout: float = 300):
    return run_optik(
        "serve",
        "poll",
        model,
        "--in",
        in_dir,
        "--out",
        out_dir,
        "--optimize",
        optimize,
        "--batch-size",
        "16",
        *args,
        timeout=timeout,
    )


def test_many_images_15_broken_one_output_each(served: Served, tmp_path):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    truth = drop_images(in_dir, served.many)  # 285 for a classifier: 300 files in all
    broken = broken_images(in_dir)  # the last batch holds only these: nothing for the model to see
    done = serve_poll(
        served.model, in_dir, out_dir, *served.options, "--settle", "0.2", "--truncated-after", "0.5",
        optimize=served.optimize,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert list(in_dir.iterdir()) == []  # every input moved on
    found = 0
    for name in truth:  # one complete prediction, and the image next to it
        found += served.check_output(out_dir / served.output(name), name)
        assert (out_dir / name).is_file()
    assert found > 0
    results = outputs(out_dir)
    if served.kind == "classify":
        correct = sum(
            max(results[f"{Path(n).stem}.json"].items(), key=lambda kv: kv[1])[0] == c for n, c in truth.items()
        )
        assert correct / len(truth) > 0.9
    for name in broken:  # an error record each, and the file in failed/
        record = results[f"{Path(name).stem}.error.json"]
        assert record["file"] == name and record["error"] and datetime.fromisoformat(record["time"])
        assert (out_dir / "failed" / name).is_file()
    answers = sorted(p.name for p in out_dir.iterdir() if p.is_file() and not p.name.endswith(".jpg"))
    # nothing else, no temp files
    assert answers == sorted([served.output(n) for n in truth] + [f"{Path(n).stem}.error.json" for n in broken])
    assert len(list((out_dir / "failed").iterdir())) == 15
    reason = {
        kind: results[f"broken0_{kind}.error.json"]["error"] for kind in ("truncated", "zero", "text", "cut", "huge")
    }
    assert reason["zero"] == "empty file (0 bytes)" and reason["text"].startswith("not an image")
    assert (
        reason["truncated"].startswith("truncated")
        and reason["cut"].startswith("truncated")
        and reason["huge"].startswith("image too large")
    )


@pytest.mark.slow
def test_sigkill_at_five_random_moments_loses_and_doubles_nothing(colour_model, tmp_path):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    truth = drop_images(in_dir, 200, size=96)
    rng, seen = random.Random(7), {}
    for _ in range(5):
        before = len(list(out_dir.glob("*.json"))) if out_dir.exists() else 0
        service = Service(
            "poll",
            colour_model,
            "--in",
            in_dir,
            "--out",
            out_dir,
            "--optimize",
            "fused",
            "--batch-size",
            "4",
            "--continuous",
        )
        target = before + rng.randint(1, 30)
        deadline = time.monotonic() + 120
        while len(list(out_dir.glob("*.json"))) < target and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(rng.random() * 0.05)  # somewhere inside a batch: writing outputs, moving inputs
        service.kill()
        for path in out_dir.glob("*.json"):  # an output, once written, never changes
            text = path.read_text()
            assert seen.setdefault(path.name, text) == text
    final = serve_poll(colour_model, in_dir, out_dir)
    assert final.returncode == 0, final.stderr
    results = outputs(out_dir)
    assert sorted(results) == sorted(f"{Path(n).stem}.json" for n in truth)  # 200, none missing, no errors
    assert all(seen.get(name, text) == text for name, text in ((p.name, p.read_text()) for p in out_dir.glob("*.json")))
    assert list(in_dir.iterdir()) == [] and sorted(p.name for p in out_dir.glob("*.jpg")) == sorted(truth)


@pytest.mark.parametrize(
    "ext", [".jpg", pytest.param(".png", marks=pytest.mark.slow), pytest.param(".bmp", marks=pytest.mark.slow)]
)
def test_a_file_written_slowly_is_read_only_when_complete(colour_model, tmp_path, ext):
    """Written in 8 chunks over 2 seconds while the service polls every 0.05 s: one good prediction."""
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    buffer = io.BytesIO()
    colour_image(COLOURS["green"], 64, np.random.default_rng(3)).save(
        buffer, format={".jpg": "JPEG", ".png": "PNG", ".bmp": "BMP"}[ext]
    )
    data = buffer.getvalue()
    service = Service(
        "poll",
        colour_model,
        "--in",
        in_dir,
        "--out",
        out_dir,
        "--optimize",
        "fused",
        "--continuous",
        "--poll-wait",
        "0.05",
        "--settle",
        "1.0",
    )
    service.wait_for("ready")
    with open(in_dir / f"slow{ext}", "wb") as fh:
        for part in np.array_split(np.frombuffer(data, np.uint8), 8):
            fh.write(part.tobytes())
            fh.flush()
            time.sleep(0.25)
    deadline = time.monotonic() + 30
    while not (out_dir / "slow.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert service.stop() == 0
    assert set(json.loads((out_dir / "slow.json").read_text())) == set(CLASSES), service.log
    assert not (out_dir / "slow.error.json").exists() and (out_dir / f"slow{ext}").read_bytes() == data


def look_times(log: str) -> list[float]:
    stamps = re.findall(r"^(\S+ \S+) DEBUG no files in", log, flags=re.M)
    return [datetime.strptime(s, "%Y-%m-%d %H:%M:%S,%f").timestamp() for s in stamps]


@pytest.mark.slow  # over 10 s: CI runs it; `make test-fast` leaves it out
def test_continuous_waits_poll_wait_between_empty_looks(colour_model, tmp_path):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    service = Service(
        "poll",
        colour_model,
        "--prediction_in",
        in_dir,
        "--prediction_out",
        out_dir,
        "--optimize",
        "fused",
        "--continuous",
        "--poll_wait",
        "0.7",
        "--verbose",
    )
    service.wait_for("ready")
    time.sleep(3)
    drop_images(in_dir, 2)  # still served while it waits
    deadline = time.monotonic() + 10
    while len(list(out_dir.glob("*.json"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert service.stop() == 0  # SIGTERM: a clean exit
    assert len(outputs(out_dir)) == 2
    gaps = np.diff(look_times(service.log))
    assert len(gaps) >= 3 and (gaps >= 0.7 - 0.01).all(), gaps  # honoured: never looks sooner than --poll-wait


def test_watch_answers_a_new_file_within_a_second(colour_model, tmp_path):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    service = Service(
        "poll",
        colour_model,
        "--in",
        in_dir,
        "--out",
        out_dir,
        "--optimize",
        "fused",
        "--use_watchdog",
        "--watchdog_check_interval",
        "60",
    )
    service.wait_for("ready")
    time.sleep(0.5)
    latencies = []
    for i in range(3):
        staged = tmp_path / f"w{i}.jpg"
        colour_image(COLOURS["red"], 40, np.random.default_rng(i)).save(staged)
        start = time.monotonic()
        os.replace(staged, in_dir / staged.name)  # the atomic drop
        while not (out_dir / f"w{i}.json").exists() and time.monotonic() - start < 30:
            time.sleep(0.005)
        latencies.append(time.monotonic() - start)
    assert service.stop() == 0
    assert sorted(latencies)[1] < 1.0, latencies  # the rescan is 60 s away: only the file event explains this


@pytest.mark.parametrize("disposal", ["done", "delete", "tmp"])
def test_done_delete_and_tmp_options(colour_model, tmp_path, disposal):
    in_dir, out_dir, other = tmp_path / "in", tmp_path / "out", tmp_path / "other"
    truth = drop_images(in_dir, 5, ext=".PNG")  # extensions in any case
    (in_dir / ".hidden.jpg").write_bytes(b"x")
    (in_dir / "copying.jpg.part").write_bytes(b"x")
    (in_dir / "notes.txt").write_text("not an image: left alone")
    args = {"done": ["--done", other], "delete": ["--delete_input"], "tmp": ["--prediction_tmp", other]}[disposal]
    done = serve_poll(colour_model, in_dir, out_dir, *args)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in in_dir.iterdir()) == [".hidden.jpg", "copying.jpg.part", "notes.txt"]
    assert sorted(outputs(out_dir)) == sorted(f"{Path(n).stem}.json" for n in truth)
    moved = sorted(p.name for p in (other if disposal == "done" else out_dir).glob("*.PNG"))
    assert moved == ([] if disposal == "delete" else sorted(truth))
    if disposal == "tmp":
        assert list(other.iterdir()) == []  # staged, then renamed into --out


def test_restart_finishes_a_journalled_image_and_repredicts_a_replaced_one(colour_model, tmp_path):
    """A run stopped after writing outputs but before moving the images: the next run moves them without
    predicting again; an image replaced under the same name since then is predicted, as a new image of that name."""
    from optik.outputs.classification import ClassificationFormat
    from optik.services.poller import FilePoller, PollOptions, identity

    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    drop_images(in_dir, 3)
    journal = FilePoller(None, ClassificationFormat(), PollOptions(in_dir, out_dir)).journal
    entries = []
    for name in ("0000_red.jpg", "0001_green.jpg"):
        entries.append(
            {
                "name": name,
                "identity": list(identity((in_dir / name).stat())),
                "output": name.replace(".jpg", ".json"),
                "before": 0,
                "ok": True,
            }
        )
        (out_dir / name.replace(".jpg", ".json")).write_text('{"written": "before the stop"}')
    journal.write_text("\n".join(map(json.dumps, entries)))
    replaced = in_dir / "0001_green.jpg"
    replaced.write_bytes((in_dir / "0002_blue.jpg").read_bytes())  # a new image under the same name
    done = serve_poll(colour_model, in_dir, out_dir)
    assert done.returncode == 0, done.stderr
    assert json.loads((out_dir / "0000_red.json").read_text()) == {"written": "before the stop"}  # not predicted twice
    # the replaced image is predicted, beside the answer of the one it replaced (never overwritten)
    assert json.loads((out_dir / "0001_green.json").read_text()) == {"written": "before the stop"}
    assert set(json.loads((out_dir / "0001_green-1.json").read_text())) == set(CLASSES)
    assert list(in_dir.iterdir()) == [] and not journal.exists()


@pytest.mark.parametrize("served", ["detect-roi"], indirect=True)  # a classifier would be done before the signal lands
def test_sigterm_finishes_the_batch_in_hand(served: Served, tmp_path):
    """SIGTERM after the first batch: exit 0, and the folder says exactly what was done. Each image is either
    answered (here `<stem>-rois.csv`, header first) and moved on, or untouched in --in; whole batches only."""
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    truth = drop_images(in_dir, 24)
    service = Service(
        "poll",
        served.model,
        "--in",
        in_dir,
        "--out",
        out_dir,
        "--optimize",
        served.optimize,
        *served.options,
        "--batch-size",
        "4",
        "--verbose",
    )
    service.wait_for("batch: 4 predicted")
    assert service.stop() == 0 and "finishing the batch in hand" in service.log, service.log
    moved, left = {p.name for p in out_dir.glob("*.jpg")}, {p.name for p in in_dir.iterdir()}
    assert moved | left == set(truth) and not moved & left
    assert sorted(p.name for p in out_dir.glob(f"*{served.suffix}")) == sorted(served.output(n) for n in moved)
    assert len(moved) % 4 == 0 and not list(out_dir.glob(".*"))  # no journal or temp file left behind
    for name in moved:
        served.check_output(out_dir / served.output(name), name)


def test_images_sharing_a_stem_get_separate_outputs(colour_model, tmp_path):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    drop_images(in_dir, 1, ext=".jpg")
    time.sleep(0.01)
    (in_dir / "0000_red.png").write_bytes(_png(COLOURS["blue"]))
    done = serve_poll(colour_model, in_dir, out_dir)
    assert done.returncode == 0, done.stderr
    assert sorted(outputs(out_dir)) == ["0000_red.json", "0000_red.png.json"]
    assert sorted(p.name for p in out_dir.glob("0000_red.*g")) == ["0000_red.jpg", "0000_red.png"]


def _png(colour) -> bytes:
    buffer = io.BytesIO()
    colour_image(colour, 40, np.random.default_rng(5)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_file_replaced_while_predicted_is_left_for_the_next_pass(colour_model, tmp_path):
    from optik.outputs.classification import ClassificationFormat
    from optik.services.poller import FilePoller, PollOptions
    from optik.tasks.loading import load_predictor

    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    drop_images(in_dir, 2)
    poller = FilePoller(
        load_predictor(colour_model, device="cpu", mode="fused"),
        ClassificationFormat(),
        PollOptions(in_dir, out_dir, settle=0),
    )
    poller.scan()
    ready, _ = poller.scan()
    results = poller.predictor.predict([d.path for d in ready])
    swapped = ready[0].path
    swapped.write_bytes(swapped.read_bytes())  # rewritten between scan and commit
    poller.commit(list(zip(ready, results)))
    assert [p.name for p in in_dir.iterdir()] == [swapped.name] and sorted(outputs(out_dir)) == ["0001_green.json"]


def test_bad_options_exit_2_with_a_clear_message(colour_model, tmp_path):
    missing = serve_poll(colour_model, tmp_path / "nope", tmp_path / "out")
    assert missing.returncode == 2 and "input folder not found" in missing.stderr
    (tmp_path / "in").mkdir()
    both = serve_poll(colour_model, tmp_path / "in", tmp_path / "out", "--done", tmp_path / "d", "--delete-input")
    assert both.returncode == 2 and "not both" in both.stderr
    same = serve_poll(colour_model, tmp_path / "in", tmp_path / "in")
    assert same.returncode == 2 and "cannot also be" in same.stderr
    modes = serve_poll(colour_model, tmp_path / "in", tmp_path / "out", "--continuous", "--watch")
    assert modes.returncode == 2 and "not both" in modes.stderr


@pytest.mark.parametrize(
    "model, option, message",
    [
        ("shapes_detector", ["--top-k", "1"], "--top-k applies to classifiers"),
        ("shapes_detector", ["--format", "json"], "--format json is for classifiers"),
        ("colour_model", ["--format", "opex"], "--format opex is for detectors"),
    ],
    ids=["detector-top-k", "detector-json", "classifier-opex"],
)
def test_output_options_that_do_not_fit_the_model_exit_2(model, option, message, request, tmp_path):
    drop_images(tmp_path / "in", 1)
    done = serve_poll(request.getfixturevalue(model), tmp_path / "in", tmp_path / "out", *option, optimize="eager")
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert [p.name for p in (tmp_path / "in").iterdir()] == ["0000_red.jpg"] and not list(
        (tmp_path / "out").glob("*.json")
    )


def test_a_second_poller_on_the_same_folder_is_refused(colour_model, tmp_path):
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    service = Service(
        "poll", colour_model, "--in", in_dir, "--out", tmp_path / "out", "--optimize", "fused", "--continuous"
    )
    service.wait_for("ready")
    time.sleep(0.5)
    second = serve_poll(colour_model, in_dir, tmp_path / "out2")
    assert second.returncode == 2 and "already serving" in second.stderr
    assert service.stop() == 0


def test_a_jpeg_written_in_two_parts_ending_at_its_thumbnail_marker_is_predicted(colour_model, tmp_path):
    """The first part ends with the EXIF thumbnail's end-of-image marker (FFD9), a second before the rest."""
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    data = jpeg_with_thumbnail(size=64, seed=3)
    first = data.index(b"\xff\xd9") + 2
    assert first < len(data) - 2
    service = Service(
        "poll", colour_model, "--in", in_dir, "--out", out_dir, "--optimize", "fused", "--continuous",
        "--poll-wait", "0.05", "--settle", "5",
    )  # fmt: skip
    service.wait_for("ready")
    with open(in_dir / "photo.jpg", "wb") as fh:
        fh.write(data[:first])
        fh.flush()
        time.sleep(1.0)
        fh.write(data[first:])
    deadline = time.monotonic() + 30
    while not (out_dir / "photo.jpg").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert service.stop() == 0
    assert set(json.loads((out_dir / "photo.json").read_text())) == set(CLASSES), service.log
    assert not (out_dir / "failed").exists()  # made at the first failure only
    assert (out_dir / "photo.jpg").read_bytes() == data


def test_a_copy_that_stalls_longer_than_settle_is_waited_for_not_failed(colour_model, tmp_path):
    """A copy to the drop folder that stalls 2.5 s (a slow share) while --settle is 0.3 s: a JPEG without its
    end is still being written, so it is predicted once whole; a truncated one that never grows fails
    after --truncated-after."""
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    buffer = io.BytesIO()
    colour_image(COLOURS["green"], 64, np.random.default_rng(3)).save(buffer, format="JPEG")
    data = buffer.getvalue()
    service = Service(
        "poll", colour_model, "--in", in_dir, "--out", out_dir, "--optimize", "fused", "--continuous",
        "--poll-wait", "0.05", "--settle", "0.3", "--truncated-after", "6",
    )  # fmt: skip
    service.wait_for("ready")
    (in_dir / "cut.jpg").write_bytes(data[: len(data) // 2])
    with open(in_dir / "stalled.jpg", "wb") as fh:
        fh.write(data[: len(data) // 3])
        fh.flush()
        time.sleep(2.5)
        fh.write(data[len(data) // 3 :])
    deadline = time.monotonic() + 30
    while not (out_dir / "cut.error.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert service.stop() == 0
    assert set(json.loads((out_dir / "stalled.json").read_text())) == set(CLASSES), service.log
    assert (out_dir / "stalled.jpg").read_bytes() == data and not (out_dir / "stalled.error.json").exists()
    assert json.loads((out_dir / "cut.error.json").read_text())["error"].startswith("truncated")
    assert "stalled.jpg: not whole yet" in service.log and "cut.jpg: not whole yet" in service.log


def test_a_temp_output_left_by_a_killed_run_is_removed_at_start(colour_model, tmp_path):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    drop_images(in_dir, 1)  # 0000_red.jpg: its output was being written when the service was killed
    out_dir.mkdir()
    stale = out_dir / ".0000_red.json.k2j4x9q1.tmp"
    stale.write_text('{"red": 0.')
    others = out_dir / ".someone-else.json.a1b2c3d4.tmp"  # another writer's, fresh: left for the age sweep
    others.write_text("{")
    done = serve_poll(colour_model, in_dir, out_dir)
    assert done.returncode == 0, done.stderr
    assert not stale.exists() and others.exists()
    assert set(json.loads((out_dir / "0000_red.json").read_text())) == set(CLASSES)


def test_a_second_failure_of_the_same_name_keeps_the_first(colour_model, tmp_path):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    for text in ("first slow.jpg\n", "second slow.jpg\n"):  # dropped one after the other
        (in_dir / "slow.jpg").write_text(text)
        done = serve_poll(colour_model, in_dir, out_dir, "--settle", "0")
        assert done.returncode == 0, done.stderr
    assert (out_dir / "failed" / "slow.jpg").read_text() == "first slow.jpg\n"
    assert (out_dir / "failed" / "slow-1.jpg").read_text() == "second slow.jpg\n"
    assert sorted(p.name for p in out_dir.glob("*.error.json")) == ["slow-1.error.json", "slow.error.json"]
    assert json.loads((out_dir / "slow-1.error.json").read_text())["file"] == "slow.jpg"


@pytest.mark.parametrize("disposal", ["out", "done"])
def test_an_image_dropped_under_a_name_already_answered_keeps_the_earlier_one(colour_model, tmp_path, disposal):
    """Phones and cameras repeat file names: the second IMG.jpg gets IMG-1.json and moves on as IMG-1.jpg
    (or on, when an image named IMG-1.jpg comes with it), and the first image and its answer stay."""
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    moved = out_dir if disposal == "out" else tmp_path / "done"
    extra = () if disposal == "out" else ("--done", moved)
    rng = np.random.default_rng(3)
    colour_image(COLOURS["red"], 40, rng).save(tmp_path / "red.jpg")
    colour_image(COLOURS["blue"], 40, rng).save(tmp_path / "blue.jpg")
    in_dir.mkdir()
    shutil.copy(tmp_path / "red.jpg", in_dir / "IMG.jpg")
    assert serve_poll(colour_model, in_dir, out_dir, *extra).returncode == 0
    first = (out_dir / "IMG.json").read_text()
    shutil.copy(tmp_path / "blue.jpg", in_dir / "IMG.jpg")
    shutil.copy(tmp_path / "blue.jpg", in_dir / "IMG-1.jpg")  # a name the second IMG.jpg would take
    done = serve_poll(colour_model, in_dir, out_dir, *extra)
    assert done.returncode == 0, done.stderr
    assert (out_dir / "IMG.json").read_text() == first and (moved / "IMG.jpg").read_bytes() == (
        tmp_path / "red.jpg"
    ).read_bytes()
    answers = {p.stem: json.loads(p.read_text()) for p in out_dir.glob("*.json")}
    assert len(answers) == 3 and max(answers["IMG"], key=answers["IMG"].get) == "red"
    assert all(max(a, key=a.get) == "blue" for stem, a in answers.items() if stem != "IMG")
    assert {p.stem for p in moved.glob("*.jpg")} == set(answers)  # each image beside its own answer's name
    assert list(in_dir.iterdir()) == []


def test_a_batch_is_written_while_the_network_runs_the_next(colour_model, tmp_path):
    """The file drop's outputs go to disk in a thread of their own: batch 2's forward pass starts while
    batch 1 is still being written, and everything ends committed once, in order."""
    import threading

    from optik.outputs.classification import ClassificationFormat
    from optik.services.poller import FilePoller, PollOptions
    from optik.tasks.loading import load_predictor

    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    truth = drop_images(in_dir, 6)
    predictor = load_predictor(colour_model, device="cpu", batch_size=2, mode="eager")
    second_batch_runs, overlapped = threading.Event(), []
    run_batch = predictor._run_batch

    def counting(loaded, calls=[]):  # noqa: B006 - the calls so far
        calls.append(len(loaded))
        if len(calls) == 2:
            second_batch_runs.set()
        return run_batch(loaded)

    predictor._run_batch = counting

    class Waiting(ClassificationFormat):
        def write(self, result, path, staging_dir=None):
            if not overlapped:  # the first output: held until the network has started on the next batch
                overlapped.append(second_batch_runs.wait(timeout=60))
            return super().write(result, path, staging_dir)

    rate = FilePoller(predictor, Waiting(), PollOptions(in_dir, out_dir)).run()
    assert overlapped == [True]
    assert rate.done == 6 and sorted(p.stem for p in out_dir.glob("*.json")) == sorted(Path(n).stem for n in truth)
