"""The file drop: images appear in a folder, predictions appear in another, and no image is lost.

For each complete image file in `in_dir` (oldest first) the poller writes the prediction
atomically, then moves the image on (to `out_dir`, `done_dir`, or deletes it). An image that
cannot be decoded gets `<stem>.error.json` and moves to `failed_dir`. Output first, input second:
a crash between the two leaves the image in place with its output already written, which the next
run recognises (the output is newer than the image's last change) and finishes without predicting
again, so every image ends with exactly one output.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from optik.data.decode import PNG_END, is_image_file
from optik.errors import ConfigError
from optik.files import move_atomic, write_atomic
from optik.outputs.classification import error_record
from optik.services.loop import Rate, Stop, log

JPEG_SUFFIXES = {".jpg", ".jpeg"}


def has_end_marker(path: Path) -> bool | None:
    """Whether a JPEG, PNG or GIF file ends with its format's end marker; None for other formats."""
    suffix = path.suffix.lower()
    if suffix not in JPEG_SUFFIXES | {".png", ".gif"}:
        return None
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64))
            tail = fh.read()
    except OSError:
        return False
    if suffix in JPEG_SUFFIXES:
        return tail.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9")  # some writers pad after the EOI marker
    if suffix == ".png":
        return tail.endswith(PNG_END)
    return tail.endswith(b";")


def is_complete(path: Path, stat: os.stat_result, settle: float, now: float) -> bool:
    """A file is complete when its format's end marker is there, or when it has not changed for `settle` s.

    A truncated JPEG or PNG never gets its marker; it is taken once it has been left alone for
    `settle` seconds, and then fails to decode like any other broken image.
    """
    if stat.st_size > 0 and has_end_marker(path):
        return True
    return now - stat.st_mtime >= settle


@dataclass
class PollOptions:
    """Where files come from and go to, and how the poller waits (see `optik serve poll --help`)."""

    in_dir: Path
    out_dir: Path
    tmp_dir: Path | None = None
    done_dir: Path | None = None
    failed_dir: Path | None = None
    delete_input: bool = False
    continuous: bool = False
    watch: bool = False
    poll_wait: float = 1.0
    watch_interval: float = 10.0
    settle: float = 1.0

    def __post_init__(self) -> None:
        self.failed_dir = self.failed_dir or self.out_dir / "failed"
        if self.delete_input and self.done_dir is not None:
            raise ConfigError("give --done DIR or --delete-input, not both")
        if not self.in_dir.is_dir():
            raise ConfigError(f"input folder not found: {self.in_dir}")
        if self.poll_wait < 0 or self.watch_interval <= 0 or self.settle < 0:
            raise ConfigError("--poll-wait and --settle must be >= 0, --watch-interval > 0")
        folders = [self.out_dir, self.failed_dir] + [d for d in (self.tmp_dir, self.done_dir) if d is not None]
        if any(d.resolve() == self.in_dir.resolve() for d in folders):
            raise ConfigError("the input folder cannot also be the output, tmp, done or failed folder")
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
        if self.tmp_dir is not None and os.stat(self.tmp_dir).st_dev != os.stat(self.out_dir).st_dev:
            raise ConfigError(f"--tmp {self.tmp_dir} must be on the same filesystem as --out {self.out_dir} (outputs are renamed from it)")


class FilePoller:
    """Serves a predictor through a folder; see the module docstring for the guarantees.

    Args:
        predictor: an `optik.inference.Predictor` (its batch size is the micro-batch size).
        output: an output format (`suffix`, `text(result)`), e.g. `ClassificationFormat`.
        options: the folders and waiting behaviour.
    """

    def __init__(self, predictor, output, options: PollOptions, stop: Stop | None = None):
        self.predictor, self.output, self.options = predictor, output, options
        self.stop = stop if stop is not None else Stop()
        self.rate = Rate()
        self._wake = threading.Event()

    def run(self) -> Rate:
        """Serve until the folder is empty (default), or until stopped (`continuous` / `watch`)."""
        with _folder_lock(self.options.in_dir), self._watching():
            while not self.stop:
                ready, waiting = self.scan()
                if ready:
                    self.process(ready)
                elif waiting:  # files still being written: look again soon
                    self.stop.wait(min(0.2, self.options.settle / 4 or 0.05))
                elif not (self.options.continuous or self.options.watch):
                    break
                elif self.options.watch:
                    self._wake.wait(self.options.watch_interval)
                    self._wake.clear()
                else:
                    log.debug("no files in %s; next look in %.1f s", self.options.in_dir, self.options.poll_wait)
                    self.stop.wait(self.options.poll_wait)
        log.info("file drop: %s", self.rate.summary())
        return self.rate

    def scan(self) -> tuple[list[Path], int]:
        """Complete image files, oldest first (one per output name), and how many are still being written."""
        now, found, waiting = time.time(), [], 0
        with os.scandir(self.options.in_dir) as entries:
            for entry in entries:
                if not is_image_file(entry.name) or entry.name.lower().endswith((".tmp", ".part")):
                    continue
                try:
                    if not entry.is_file():
                        continue
                    stat = entry.stat()
                except FileNotFoundError:
                    continue
                if is_complete(Path(entry.path), stat, self.options.settle, now):
                    found.append((stat.st_mtime_ns, entry.name, Path(entry.path)))
                else:
                    waiting += 1
        ready, stems = [], set()
        for _, _, path in sorted(found):
            if path.stem in stems:  # a.jpg and a.png both write a.json: the second waits for the next pass
                waiting += 1
                continue
            stems.add(path.stem)
            ready.append(path)
        return ready, waiting

    def process(self, paths: list[Path]) -> None:
        """Predict `paths` in micro-batches; write each output, then move its input on."""
        todo = [path for path in paths if not self._finish_earlier_run(path)]
        size = self.predictor.batch_size
        for start in range(0, len(todo), size):
            if self.stop:
                return
            batch = todo[start : start + size]
            done = failed = 0
            for path, result in zip(batch, self.predictor.predict(batch, names=[p.name for p in batch])):
                if not path.exists():  # taken away while we worked: nothing to answer
                    continue
                if result.ok:
                    self._write(self._output_path(path), self.output.text(result))
                    self._dispose(path)
                    done += 1
                else:
                    self._fail(path, result.reason)
                    failed += 1
            self.rate.add(done, failed)
            log.info("%d image(s) predicted, %d failed (%s)", done, failed, self.rate.summary())

    def _output_path(self, path: Path) -> Path:
        return self.options.out_dir / f"{path.stem}{self.output.suffix}"

    def _error_path(self, path: Path) -> Path:
        return self.options.out_dir / f"{path.stem}.error.json"

    def _write(self, target: Path, text: str) -> None:
        write_atomic(target, text, staging_dir=self.options.tmp_dir)

    def _fail(self, path: Path, reason: str) -> None:
        log.warning("cannot predict %s: %s (moved to %s)", path.name, reason, self.options.failed_dir)
        self._write(self._error_path(path), json.dumps(error_record(path.name, reason)))
        move_atomic(path, self.options.failed_dir / path.name)

    def _dispose(self, path: Path) -> None:
        if self.options.delete_input:
            path.unlink(missing_ok=True)
        else:
            move_atomic(path, (self.options.done_dir or self.options.out_dir) / path.name)

    def _finish_earlier_run(self, path: Path) -> bool:
        """Finish an image whose output a stopped run wrote but whose move it did not do.

        An output written after the image last changed (its ctime: written, renamed into the
        folder) belongs to this very image; a newer image with the same name is predicted again.
        """
        try:
            changed = path.stat().st_ctime_ns
        except FileNotFoundError:
            return True
        for target, ok in ((self._output_path(path), True), (self._error_path(path), False)):
            try:
                if target.stat().st_mtime_ns > changed:
                    log.info("%s: output from an earlier run found; finishing it", path.name)
                    if ok:
                        self._dispose(path)
                    else:
                        move_atomic(path, self.options.failed_dir / path.name)
                    return True
            except FileNotFoundError:
                continue
        return False

    def _watching(self):
        """File events wake the loop at once (`watch`); a no-op context otherwise."""
        from contextlib import nullcontext

        if not self.options.watch:
            return nullcontext()
        return _Watch(self.options.in_dir, self._wake)


class _Watch:
    def __init__(self, folder: Path, wake: threading.Event):
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):
                if event.event_type != "opened":
                    wake.set()

        self.observer = Observer()
        self.observer.schedule(Handler(), str(folder), recursive=False)

    def __enter__(self):
        self.observer.start()
        return self

    def __exit__(self, *exc):
        self.observer.stop()
        self.observer.join(timeout=5)


class _folder_lock:
    """One poller per input folder (a second one would race the first for the same files).

    The lock is taken on the folder itself, so nothing is left behind in it.
    """

    def __init__(self, folder: Path):
        self.folder = folder

    def __enter__(self):
        self.fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self.fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ConfigError(f"another optik serve poll is already serving {self.folder}") from None
            raise
        return self

    def __exit__(self, *exc):
        os.close(self.fd)
