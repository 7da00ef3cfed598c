"""Run the real `optik` command inside the test process, as a fresh process would see it.

Importing torch, timm and Lightning costs a fresh `python -m optik.cli` 5-10 s on a small machine,
more than most commands then take; the suite makes some 250 such calls. Here the same `main` runs in
the pytest worker, which paid for those imports once, with what a new process would have:

- its own stdout and stderr, at the file-descriptor level too (native code and `os.dup2` users write
  there), read back as text; logging handlers made at import time (Lightning's) write there as well;
- a clean root logger, so the services' `logging.basicConfig` takes effect, and Python's default
  warning filters with warnings printed to stderr (pytest would otherwise record and hide them);
- `sys.argv`, the environment, working directory, signal handlers, torch's thread count and determinism of the
  caller put back afterwards, whatever the command changed;
- exit codes as the interpreter gives them: `sys.exit(n)` is n, an uncaught exception prints its
  traceback to stderr and is 1.

What needs a real process (signals sent from outside, a pipe the reader closes, a time limit, the
interpreter's start-up itself) uses `run_optik(..., process=True)` or its own `subprocess` call.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import subprocess
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

# `OPTIK_TEST_PROCESSES=1` runs every CLI call in a new process, the way CI did before this runner.
ALWAYS_PROCESS = os.environ.get("OPTIK_TEST_PROCESSES") == "1"


def run_process(args: list[str], cwd: Path | None, env: dict | None, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "optik.cli", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_in_process(args: list[str], cwd: Path | None, env: dict | None) -> subprocess.CompletedProcess:
    from optik.cli import main

    with own_output() as (out, err), restored_state(args, cwd, env), fresh_logging(), fresh_warnings():
        code = 0
        try:
            main.main(args, prog_name="optik")
        except SystemExit as exc:
            code = exit_code(exc.code)
        except BaseException:  # what the interpreter does with an uncaught exception
            traceback.print_exc(file=sys.stderr)
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
    return subprocess.CompletedProcess(["optik", *args], code, out.getvalue(), err.getvalue())


def exit_code(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # sys.exit("message"): printed, status 1
    return 1


class Captured:
    """A temporary file standing in for fd 1 or 2; its text once the command is done."""

    def __init__(self):
        self.file = tempfile.TemporaryFile()
        self.text = ""

    def getvalue(self) -> str:
        return self.text

    def close(self) -> None:
        self.file.seek(0)
        self.text = self.file.read().decode("utf-8", errors="replace")
        self.file.close()


@contextlib.contextmanager
def own_output():
    """fds 1 and 2, sys.stdout/sys.stderr and every logging StreamHandler on them point at two fresh files."""
    out, err = Captured(), Captured()
    sys.stdout.flush()
    sys.stderr.flush()
    saved_fds = os.dup(1), os.dup(2)
    saved_streams = sys.stdout, sys.stderr
    os.dup2(out.file.fileno(), 1)
    os.dup2(err.file.fileno(), 2)
    sys.stdout = io.TextIOWrapper(os.fdopen(os.dup(1), "wb"), encoding="utf-8", line_buffering=True)
    sys.stderr = io.TextIOWrapper(os.fdopen(os.dup(2), "wb"), encoding="utf-8", line_buffering=True)
    redirected = []
    for ref in list(logging._handlerList):  # noqa: SLF001 - every handler made so far, Lightning's among them
        handler = ref()
        if type(handler) is logging.StreamHandler and handler.stream in saved_streams + (sys.__stderr__,):
            redirected.append((handler, handler.setStream(sys.stderr)))
    try:
        yield out, err
    finally:
        for handler, stream in redirected:
            handler.setStream(stream)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.close()
        sys.stdout, sys.stderr = saved_streams
        os.dup2(saved_fds[0], 1)
        os.dup2(saved_fds[1], 2)
        for fd in saved_fds:
            os.close(fd)
        out.close()
        err.close()


@contextlib.contextmanager
def restored_state(args: list[str], cwd: Path | None, env: dict | None):
    """The process's argv, environment and working directory for the command; all it changed put back after."""
    saved_env, saved_cwd, saved_argv = dict(os.environ), os.getcwd(), sys.argv
    sys.argv = ["optik", *args]  # a command that starts itself again (batch-predict --devices N) reads it
    saved_signals = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    torch = sys.modules.get("torch")
    saved_torch = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) if torch else None
    os.environ.update({k: str(v) for k, v in (env or {}).items()})
    if cwd is not None:
        os.chdir(cwd)
    try:
        yield
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        for sig, handler in saved_signals.items():
            signal.signal(sig, handler)
        torch = sys.modules.get("torch")
        if torch is not None:
            threads, deterministic = saved_torch or (int(os.environ.get("OMP_NUM_THREADS", "1")), False)
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(deterministic)


@contextlib.contextmanager
def fresh_logging():
    """A root logger with no handlers (pytest's are put back after), as in a new interpreter."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers.clear()
    root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for handler in root.handlers[:]:
            if handler not in saved[0]:
                root.removeHandler(handler)
                handler.close()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


@contextlib.contextmanager
def fresh_warnings():
    """Python's default filters, and warnings printed to stderr: what a user of the command would see."""
    with warnings.catch_warnings():
        warnings.resetwarnings()
        warnings.simplefilter("default")
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", category)
        warnings.showwarning = show_warning
        yield


def show_warning(message, category, filename, lineno, file=None, line=None):
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))
