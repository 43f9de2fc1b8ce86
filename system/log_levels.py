"""Third-party chatter off by default; `--verbose` (`run.verbose`) brings it back.

What our code prints (the stage timer, one `[stage1]` line per epoch, the sweep's trial lines, warnings) is kept.
Quietened: open_clip's model-building lines (logged on the root logger), Ray Train's and Tune's INFO lines, Ray
Data's console lines (its log file under the Ray session keeps them), DeepSpeed's INFO lines, torch.distributed's
FutureWarnings, warnings about what uniproto does on purpose (`EXPECTED_WARNINGS`), DeepSpeed's print of the
CPU all-reduce op it built (`drop_expected_prints`) and Tune's experiment header (`tune_console`). Every process of a run
applies this: the driver when Ray starts, every Ray worker of a local Ray through Ray's worker setup hook
(system.runtime.cluster.quiet_worker), and our own entry points on a cluster's workers (the Train loop, the trial, the feature
encoder). No import of Ray, torch or DeepSpeed here.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator
from typing import TextIO

VERBOSE_ENV = "UNIPROTO_VERBOSE"
TUNE_OUTPUT_ENV = "RAY_AIR_NEW_OUTPUT"  # read by Tune when a run starts: "0" picks its legacy console output
QUIET_LOGGERS = ("ray.train", "ray.tune", "DeepSpeed")
# Loggers whose warnings are about this machine, not the run ("No CUDA runtime is found" on a CPU node).
ERROR_ONLY_LOGGERS = ("torch.utils.cpp_extension",)
# Libraries that log INFO lines through the root logger: open_clip on it directly, Ray Train's worker context on a
# logger named after its file, which propagates there.
_QUIET_ROOT_SOURCES = (f"{os.sep}open_clip{os.sep}", f"{os.sep}ray{os.sep}train{os.sep}")
# Warnings about what uniproto does on purpose: models built without weights (stage 2 and the probes load theirs
# next), and Ray Data's progress bars, which `ray.data_progress_bars` turns off.
EXPECTED_WARNINGS = ("No pretrained weights loaded for model", "Progress bars disabled")


class DropLibraryInfo(logging.Filter):
    """Drops records below WARNING that a quietened library logged on the root logger, and the expected
    warnings above."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith(EXPECTED_WARNINGS):
            return False
        return record.levelno >= logging.WARNING or not any(s in record.pathname for s in _QUIET_ROOT_SOURCES)


def verbose_from_env() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def quiet_third_party_logs(verbose: bool | None = None) -> None:
    """Apply the quiet levels in this process (idempotent). `verbose` None reads UNIPROTO_VERBOSE. Call it again
    after importing a library that sets its own level on import (DeepSpeed, Ray Data)."""
    if verbose is None:
        verbose = verbose_from_env()
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    if verbose:
        return
    # On the loggers (records logged on them) and on their handlers (records propagated from other loggers)
    for logger in (logging.getLogger(), logging.getLogger("ray.data")):
        for target in (logger, *logger.handlers):
            if not any(isinstance(f, DropLibraryInfo) for f in target.filters):
                target.addFilter(DropLibraryInfo())
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ERROR_ONLY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # Ray Data logs at DEBUG to its session file and at INFO to the console: only the console goes quiet.
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    # Ray Train's own use of a Ray Data option it deprecated (its DatasetManager actor)
    warnings.filterwarnings("ignore", message=r".*ExecutionOptions\.exclude_resources")


# Lines third-party code prints (not logs) that say nothing about the run: DeepSpeed's CPU shared-memory
# all-reduce op, built when an engine starts on a CPU node.
EXPECTED_PRINTS = (re.compile(r"^DeepSpeed \S+ built successfully$"),)


class _DropPrintedLines(io.TextIOBase):
    """A stdout that forwards every line but those matching `patterns` (whole lines, buffered until '\\n')."""

    def __init__(self, target: TextIO, patterns: tuple[re.Pattern[str], ...]) -> None:
        self.target, self.patterns, self.pending = target, patterns, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            if not any(p.match(line) for p in self.patterns):
                self.target.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.target.flush()


@contextlib.contextmanager
def drop_expected_prints(verbose: bool) -> Iterator[None]:
    """Within the block, lines printed to stdout that match EXPECTED_PRINTS are dropped (unless `verbose`)."""
    if verbose:
        yield
        return
    target = sys.stdout
    sys.stdout = wrapper = _DropPrintedLines(target, EXPECTED_PRINTS)
    try:
        yield
    finally:
        sys.stdout = target
        if wrapper.pending:
            target.write(wrapper.pending)


@contextlib.contextmanager
def tune_console(verbose: bool) -> Iterator[None]:
    """Tune's console within the block: its status table and experiment header under `verbose`, nothing else
    otherwise. Tune's default output engine prints an experiment header box even at verbose 0; its legacy engine,
    chosen by RAY_AIR_NEW_OUTPUT=0 when the run starts, prints nothing at verbose 0."""
    if verbose:
        yield
        return
    before = os.environ.get(TUNE_OUTPUT_ENV)
    os.environ[TUNE_OUTPUT_ENV] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(TUNE_OUTPUT_ENV, None)
        else:
            os.environ[TUNE_OUTPUT_ENV] = before
