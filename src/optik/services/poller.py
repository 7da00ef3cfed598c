"""The file drop: images appear in a folder, predictions appear in another, and no image is lost.

For each complete image file in `in_dir` (oldest first) the poller writes the prediction
atomically, then moves the image on (to `out_dir`, `done_dir`, or deletes it). An image that
cannot be decoded gets `<stem>.error.json` and moves to `failed_dir`. Output first, input second,
with a journal of the batch in hand: a crash between the two leaves the image in place with its
output already written, which the next run recognises from the journal and finishes without
predicting again, so every image ends with exactly one output, written once.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from optik.data.decode import is_image_file, is_whole
from optik.errors import ConfigError
from optik.files import move_atomic, remove_stale_temp_files, remove_temp_files_of, write_atomic
from optik.outputs.classification import write_error
from optik.outputs.names import output_stems
from optik.services.loop import Behind, Rate, Stop, log, predict_batches
from optik.services.metrics import ServiceMetrics


def whole(path: Path) -> bool | None:
    """Whether an image file is written to its end by its format's structure (`is_whole`); False when it
    cannot be read."""
    try:
        with open(path, "rb") as fh:
            return is_whole(fh)
    except OSError:
        return False


class Completeness:
    """Decides when a file in the drop folder has been written completely.

    A JPEG, PNG, WebP or BMP file is complete once its format's structure says it is whole (`is_whole`:
    a JPEG's end-of-image marker after its image data, not its thumbnail's). One that is not whole yet is
    still being written (a copy that stalls, a slow network share) until it has stayed unchanged for
    `truncated_after` seconds; then it is taken as truncated, and fails. Other files are complete once they
    have stayed unchanged for `settle` seconds. Unchanged: two looks see the same size and modification
    time, and either the file is that old or this poller has seen it unchanged that long (so files with
    clocks ahead or behind still settle). Half-written files are never read.
    """

    def __init__(self, settle: float, truncated_after: float):
        self.settle, self.truncated_after = settle, truncated_after
        self.seen: dict[str, tuple[tuple[int, int], float]] = {}
        self.told: set[str] = set()

    def __call__(self, path: Path, stat: os.stat_result) -> bool:
        state = whole(path)
        if state:
            return True
        wait = self.settle if state is None else self.truncated_after
        key, now = (stat.st_size, stat.st_mtime_ns), time.monotonic()
        previous = self.seen.get(path.name)
        if previous is None or previous[0] != key:
            self.seen[path.name] = (key, now)
            return False
        unchanged = max(time.time() - stat.st_mtime, now - previous[1])
        if state is False and unchanged >= self.settle and path.name not in self.told:
            self.told.add(path.name)
            log.info(
                "%s: not whole yet (%d bytes); waiting for the rest, or taken as truncated after %.0f s unchanged",
                path.name,
                stat.st_size,
                self.truncated_after,
            )
        return unchanged >= wait

    def forget(self, names: set[str]) -> None:
        """Drop what is no longer in the folder."""
        for name in set(self.seen) - names:
            del self.seen[name]
        self.told &= names


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
    truncated_after: float = 60.0

    def __post_init__(self) -> None:
        given_failed = self.failed_dir is not None  # the default OUT/failed is made at the first failure
        self.failed_dir = self.failed_dir or self.out_dir / "failed"
        if self.delete_input and self.done_dir is not None:
            raise ConfigError("give --done DIR or --delete-input, not both")
        if self.continuous and self.watch:
            raise ConfigError(
                "give --continuous (look every --poll-wait s) or --watch (react to file events), not both"
            )
        if not self.in_dir.is_dir():
            raise ConfigError(f"input folder not found: {self.in_dir}")
        if self.poll_wait < 0 or self.watch_interval <= 0 or self.settle < 0 or self.truncated_after < 0:
            raise ConfigError("--poll-wait, --settle and --truncated-after must be >= 0, --watch-interval > 0")
        folders = [self.out_dir, self.failed_dir] + [d for d in (self.tmp_dir, self.done_dir) if d is not None]
        if any(d.resolve() == self.in_dir.resolve() for d in folders):
            raise ConfigError("the input folder cannot also be the output, tmp, done or failed folder")
        for folder in folders:
            if folder != self.failed_dir or given_failed:
                folder.mkdir(parents=True, exist_ok=True)
        if self.tmp_dir is not None and os.stat(self.tmp_dir).st_dev != os.stat(self.out_dir).st_dev:
            raise ConfigError(
                f"--tmp {self.tmp_dir} must be on the same filesystem as --out {self.out_dir} (outputs are renamed from it)"
            )


@dataclass(frozen=True)
class Drop:
    """An image file taken from the folder: where it is, its output name, and its identity when seen."""

    path: Path
    stem: str
    identity: tuple[int, int, int]  # inode, ctime, size: a file swapped in under the same name differs


def identity(stat: os.stat_result) -> tuple[int, int, int]:
    return stat.st_ino, stat.st_ctime_ns, stat.st_size


class FilePoller:
    """Serves a predictor through a folder; see the module docstring for the guarantees.

    Each micro-batch is committed in three steps: a journal in the output folder names its images
    and the outputs about to be written; the outputs are written atomically; the images are moved
    on. A run that starts after a crash reads the journal and finishes the images whose output was
    already written, without predicting them again. Two images in the folder at once with the same
    stem (a.jpg, a.png) do not share an output: the second writes `a.png.json`.

    Args:
        predictor: an `optik.inference.Predictor` (its batch size is the micro-batch size).
        output: an output format (`suffix`, `text(result)`), e.g. `ClassificationFormat`.
        options: the folders and waiting behaviour.
    """

    def __init__(
        self, predictor, output, options: PollOptions, stop: Stop | None = None, metrics: ServiceMetrics | None = None
    ):
        self.predictor, self.output, self.options = predictor, output, options
        self.stop = stop if stop is not None else Stop()
        self.metrics = metrics if metrics is not None else ServiceMetrics("poll")
        self.rate = Rate()
        self.committer = Behind("optik-commit")
        self.complete = Completeness(options.settle, options.truncated_after)
        self.stems: dict[str, str] = {}
        self.journal = (
            options.out_dir
            / f".optik-poll-{hashlib.sha1(str(options.in_dir.resolve()).encode()).hexdigest()[:10]}.journal"
        )
        self._wake = threading.Event()

    def run(self, locked: bool = False) -> Rate:
        """Serve until the folder is empty (default), or until stopped (`continuous` / `watch`).

        `locked`: the caller already holds `folder_lock(in_dir)`.
        """
        with nullcontext() if locked else folder_lock(self.options.in_dir), self._watching():
            self.remove_temp_outputs()
            self.recover()
            while not self.stop:
                ready, waiting = self.scan()
                if ready:
                    self.process(ready)
                elif waiting:  # files still being written: look again soon
                    self.stop.wait(min(0.2, self.options.settle / 4 or 0.05))
                elif not (self.options.continuous or self.options.watch):
                    break
                elif self.options.watch:
                    self._sleep_until_event(self.options.watch_interval)
                else:
                    log.debug("no files in %s; next look in %.1f s", self.options.in_dir, self.options.poll_wait)
                    self.stop.wait(self.options.poll_wait)
        log.info("file drop: %s", self.rate.summary())
        return self.rate

    def remove_temp_outputs(self) -> None:
        """Remove the temp files a killed run left: at once those of this folder's outputs (an image's output
        is written before the image moves on, so its image is still here) and of the journal; any other after
        `remove_stale_temp_files`'s age, as another writer may share the output folder."""
        images = [p.name for p in self.options.in_dir.iterdir() if is_image_file(p.name)]
        stems = {Path(name).stem for name in images} | set(images)
        outputs = {f"{stem}{suffix}" for stem in stems for suffix in (self.output.suffix, ".error.json")}
        for folder in {self.options.out_dir, self.options.tmp_dir or self.options.out_dir}:
            removed = remove_temp_files_of(folder, outputs | {self.journal.name}) + remove_stale_temp_files(folder)
            if removed:
                log.info("removed %d temp file(s) a stopped run left in %s", removed, folder)

    def scan(self) -> tuple[list[Drop], int]:
        """Complete image files, oldest first, and how many are still being written."""
        present = []
        with os.scandir(self.options.in_dir) as entries:
            for entry in entries:
                if not is_image_file(entry.name) or entry.name.lower().endswith((".tmp", ".part")):
                    continue
                try:
                    if entry.is_file():
                        present.append((entry.stat(), entry.name))
                except FileNotFoundError:
                    continue
        present.sort(key=lambda item: (item[0].st_mtime_ns, item[1]))
        self.metrics.queue_depth.set(len(present))
        self.complete.forget({name for _, name in present})
        self._name_outputs([name for _, name in present])
        ready = [
            Drop(self.options.in_dir / name, self.stems[name], identity(stat))
            for stat, name in present
            if self.complete(self.options.in_dir / name, stat)
        ]
        return ready, len(present) - len(ready)

    def _name_outputs(self, names: list[str]) -> None:
        """Output stem per file, fixed when first seen (`output_stems`: a.jpg and a.png at once: a.json and a.png.json)."""
        here = set(names)
        self.stems = {name: stem for name, stem in self.stems.items() if name in here}
        new = [name for name in names if name not in self.stems]
        self.stems.update(zip(new, output_stems(new, taken=self.stems.values())))

    def process(self, drops: list[Drop]) -> None:
        """Predict in micro-batches; each batch is committed in a thread of its own while the network runs
        the next (one commit at a time, in order). A stop request ends after the batch in hand, committed."""
        start, taken = 0, time.monotonic()
        with self.committer.draining():  # one journal at a time; a failed commit stops the service here
            for results in predict_batches(self.predictor, [d.path for d in drops], [d.path.name for d in drops]):
                self.committer.submit(self._commit_counted, list(zip(drops[start:], results)), taken)
                start += len(results)
                if self.stop:
                    break

    def _commit_counted(self, batch: list, taken: float) -> None:
        self.metrics.batch_size.observe(len(batch))
        self.metrics.count(self.commit(batch), taken, time.monotonic())
        self.metrics.queue_depth.dec(len(batch))

    def commit(self, batch: list) -> list:
        """Journal, outputs, then inputs moved on (see the class docstring); the results committed."""
        batch = [(drop, result) for drop, result in batch if self._unchanged(drop)]
        taken: set[Path] = set()
        targets = [self._free_targets(d, r.ok, taken) for d, r in batch]
        plan = [
            {
                "name": d.path.name,
                "identity": list(d.identity),
                "output": output.name,
                "before": _inode(output),
                "ok": r.ok,
                **({} if moved_as is None else {"moved_as": moved_as}),
            }
            for (d, r), (output, moved_as) in zip(batch, targets)
        ]
        write_atomic(self.journal, "\n".join(json.dumps(entry) for entry in plan))
        for (drop, result), entry in zip(batch, plan):
            output = self.options.out_dir / entry["output"]
            if result.ok:
                self.output.write(result, output, self.options.tmp_dir)
            else:
                log.warning(
                    "cannot predict %s: %s (moved to %s)",
                    drop.path.name,
                    result.reason,
                    self.options.failed_dir / entry["moved_as"],
                )
                write_error(drop.path.name, result.reason, output, self.options.tmp_dir)
            self._dispose(drop.path, result.ok, entry.get("moved_as"))
        self.journal.unlink(missing_ok=True)
        failed = sum(not r.ok for _, r in batch)
        self.rate.add(len(batch) - failed, failed)
        log.debug("batch: %d predicted, %d failed; %s", len(batch) - failed, failed, self.rate.summary())
        return [result for _, result in batch]

    def recover(self) -> None:
        """Finish the images of a batch whose outputs a stopped run wrote but whose moves it did not do."""
        try:
            plan = [json.loads(line) for line in self.journal.read_text().splitlines() if line.strip()]
        except FileNotFoundError:
            return
        for entry in plan:
            path, target = self.options.in_dir / entry["name"], self.options.out_dir / entry["output"]
            try:
                same_image = identity(path.stat()) == tuple(entry["identity"])
            except FileNotFoundError:
                continue
            if same_image and _inode(target) not in (0, entry["before"]):
                log.info("%s: its output was written before the last stop; finishing it", path.name)
                self._dispose(path, entry["ok"], entry.get("moved_as", entry.get("failed_as")))
        self.journal.unlink(missing_ok=True)

    def _unchanged(self, drop: Drop) -> bool:
        """False when the file went away or was replaced while it was predicted (it is seen again next pass)."""
        try:
            return identity(drop.path.stat()) == drop.identity
        except FileNotFoundError:
            return False

    def _free_targets(self, drop: Drop, ok: bool, taken: set[Path]) -> tuple[Path, str | None]:
        """Where an image's output goes and the name it moves on as (None: deleted): `a.json` (or
        `a.error.json`) and `a.jpg`, else `a-1.json` and `a-1.jpg` (and on) when an earlier image of the
        same name left either there, or another image of this batch (`taken`) has them, so nothing of an
        earlier image is overwritten and each image keeps its own output's name."""
        name, suffix = Path(drop.path.name), self.output.suffix if ok else ".error.json"
        folder = self.options.failed_dir if not ok else self._moved_to()
        n = 0
        while True:
            tag = f"-{n}" if n else ""
            output = self.options.out_dir / f"{drop.stem}{tag}{suffix}"
            moved = None if folder is None else folder / f"{name.stem}{tag}{name.suffix}"
            wanted = {output} | ({moved} if moved is not None else set())
            if not wanted & taken and not any(path.exists() for path in wanted):
                taken |= wanted
                if n:
                    log.info("%s: %s%s is an earlier image's; this one's is %s", name, drop.stem, suffix, output.name)
                return output, None if moved is None else moved.name
            n += 1

    def _moved_to(self) -> Path | None:
        """The folder a predicted image moves to (None: it is deleted)."""
        return None if self.options.delete_input else self.options.done_dir or self.options.out_dir

    def _dispose(self, path: Path, ok: bool, moved_as: str | None = None) -> None:
        if not ok:
            move_atomic(path, self.options.failed_dir / (moved_as or path.name))
        elif self.options.delete_input:
            path.unlink(missing_ok=True)
        else:
            move_atomic(path, self._moved_to() / (moved_as or path.name))

    def _sleep_until_event(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop and not self._wake.is_set() and time.monotonic() < deadline:
            self._wake.wait(min(0.1, max(0.0, deadline - time.monotonic())))
        self._wake.clear()

    def _watching(self):
        """File events wake the loop at once (`watch`); a no-op context otherwise."""
        return _Watch(self.options.in_dir, self._wake) if self.options.watch else nullcontext()


def _inode(path: Path) -> int:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return 0


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


class folder_lock:
    """One poller per input folder (a second one would race the first for the same files).

    The lock is taken on the folder itself, so nothing is left behind in it. Where the filesystem
    cannot lock a folder (some network filesystems), a warning says so and the poller goes on.
    """

    def __init__(self, folder: Path):
        self.folder = folder

    def __enter__(self):
        self.fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self.fd)
            self.fd = None
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ConfigError(f"another optik serve poll is already serving {self.folder}") from None
            log.warning("cannot lock %s (%s); make sure only one poller serves it", self.folder, exc.strerror)
            self.fd = None
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)
