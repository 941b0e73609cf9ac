"""Quiet, honest console output: each log line once, no third-party advertisements or deprecation noise.

The CLI's console rule and log file are at the end (`command_logging`); first, Lightning's output.

Lightning installs its own console handler on the `lightning` logger at import time while still propagating to
the root logger, so with the CLI's root handler every Lightning line was printed twice (once bare, once with a
timestamp). It also logs "💡 Tip: ... try installing litlogger/litmodels" advertisements, and its pytree helper
triggers a torch deprecation warning about `LeafSpec` on every fit. None of these is something a mammokit user
can act on, so they are removed where they are emitted: `tidy_third_party_output()` runs right after Lightning
is imported (engine/runner.py).
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Loggers Lightning attaches console handlers to (lightning >= 2.5: "lightning"; older: the two sub-packages).
LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")
# Where `rank_zero_info` logs (the tips come through these).
LIGHTNING_RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
ADVERT_PREFIX = "💡 Tip:"


class DropAdvertisements(logging.Filter):
    """Drops Lightning's "💡 Tip: try installing ..." lines (advertisements for cloud services)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(ADVERT_PREFIX)


def tidy_third_party_output() -> None:
    """Route Lightning's log lines through the root handler once, drop its adverts and its deprecation noise.

    Idempotent. Lightning's own console handlers are removed only when the root logger has a handler (the CLI
    sets one up), so a library user who configured nothing still sees Lightning's lines.
    """
    root_configured = bool(logging.getLogger().handlers)
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if root_configured:
            for handler in list(logger.handlers):
                if type(handler) is logging.StreamHandler:  # Lightning's console handler, not a user's file handler
                    logger.removeHandler(handler)
            logger.propagate = True
    for name in LIGHTNING_RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropAdvertisements) for f in logger.filters):
            logger.addFilter(DropAdvertisements())
    # torch deprecation raised inside lightning.pytorch.utilities._pytree on every fit; fixed upstream, not ours
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*is deprecated")


# --------------------------------------------------------------------------------------------------- the CLI's console
# By default a command's console shows its step lines and progress bar (printed by the command), its result (printed,
# or logged at INFO by its `mammokit.cli.*` module) and WARNING lines a user must act on (an image shrunk to fit the
# canvas, a patient in both official splits). Everything else (module INFO lines, Lightning's banners, warnings
# raised inside libraries) goes to the command's log file, FOLDER/mammokit.log; `-v` shows it all on the console.

LOG_FILE = "mammokit.log"
# Loggers whose INFO lines are results: the command modules, and the service (its console is its request log).
RESULT_LOGGERS = ("mammokit.cli", "mammokit.serve")
# Where `warnings.warn` of a library lands (logging's own name for it, as `logging.captureWarnings` uses).
LIBRARY_WARNINGS = "py.warnings"
# mammokit's own `warnings.warn` (e.g. OneClassWarning: an AUC is undefined) is for the user: shown.
OWN_WARNINGS = "mammokit.warnings"
VERBOSE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


class ConsoleFilter(logging.Filter):
    """The console's rule without -v: WARNING and above except library warnings, and INFO of the result loggers.

    `show_results` is switched off by `mammokit demo` around each step it runs, so that a step's own result lines
    go to the log file and the demo's console shows its step lines (warnings still come through).
    """

    def __init__(self) -> None:
        super().__init__()
        self.show_results = True

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return record.name != LIBRARY_WARNINGS
        return self.show_results and record.levelno >= logging.INFO and _under(record.name, RESULT_LOGGERS)


class ConsoleFormatter(logging.Formatter):
    """A result line as is; anything else prefixed by its level ("WARNING: ...")."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno == logging.INFO else f"{record.levelname}: {text}"


class RunLogHandler(logging.Handler):
    """Appends to FOLDER/mammokit.log once the command has written into FOLDER; holds the records until then.

    Why deferred: several commands refuse an output folder that exists and is not empty (a patch set, a synthetic
    dataset), so the log file must not be the first thing in it; and a command refused before it wrote anything
    leaves no folder behind. `close()` (end of the command) writes what is held if FOLDER exists by then.
    """

    MAX_HELD = 100_000  # records held before FOLDER has content (a bound on memory, never reached in practice)

    def __init__(self, folder: Path | None, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.folder = folder  # None: not known yet (`log_to_folder` sets it); records are held meanwhile
        self.held: list[logging.LogRecord] = []
        self.file: logging.FileHandler | None = None

    @property
    def path(self) -> Path | None:
        return None if self.folder is None else self.folder / LOG_FILE

    def _open(self) -> None:
        assert self.folder is not None
        self.file = logging.FileHandler(self.folder / LOG_FILE, encoding="utf-8")
        self.file.setFormatter(self.formatter or logging.Formatter(VERBOSE_FORMAT))
        for held in self.held:
            self.file.emit(held)
        self.held.clear()

    def emit(self, record: logging.LogRecord) -> None:
        if self.file is None:
            if self.folder is None or not (self.folder.is_dir() and any(self.folder.iterdir())):
                if len(self.held) < self.MAX_HELD:
                    self.held.append(record)
                return
            self._open()
        assert self.file is not None
        self.file.emit(record)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.file is None and self.held and self.folder is not None and self.folder.is_dir():
                self._open()
        if self.file is not None:
            self.file.close()
        super().close()


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, *_: Any) -> None:
    """`warnings.showwarning` while a command runs: mammokit's warnings shown, a library's to the log file."""
    own = category.__module__.startswith("mammokit")
    logger = logging.getLogger(OWN_WARNINGS if own else LIBRARY_WARNINGS)
    if own:
        logger.warning("%s", message)
    else:  # where it came from helps whoever reads the log file
        logger.warning("%s:%s: %s: %s", filename, lineno, category.__name__, message)


_active: ConsoleFilter | None = None  # the console filter of the command running in this process, if any
_active_log: RunLogHandler | None = None  # and its log file


def log_to_folder(folder: Path) -> None:
    """Put the running command's log file in FOLDER, for a command whose output folder is known only once it has
    read its settings (evaluate's default eval/<run>-<dataset>-<split>). No-op when the folder is already set or no
    command is running; the lines logged so far are held and written there."""
    if _active_log is not None and _active_log.folder is None:
        _active_log.folder = Path(folder)


@contextlib.contextmanager
def command_logging(
    verbose: bool = False, folder: Path | None = None, *, folder_later: bool = False
) -> Iterator[Path | None]:
    """Logging for one CLI command: the console rule above, FOLDER/mammokit.log, library warnings into the log.

    `folder_later`: without FOLDER, hold the log lines for a folder the command names with `log_to_folder` (a
    command without FOLDER that never names one, such as the long-running service, holds nothing).
    Yields the log file's path (None without FOLDER). Everything is put back on exit, so the CLI can run inside a
    test process or another program. A command run by another one (the demo's steps) keeps the outer set-up: its
    lines go to the outer command's console and log file.
    """
    global _active, _active_log
    root = logging.getLogger()
    if _active is not None:  # nested: the outer command's handlers already take everything
        yield None
        return
    console = logging.StreamHandler(sys.stderr)
    console_filter = ConsoleFilter()
    if verbose:
        console.setFormatter(logging.Formatter(VERBOSE_FORMAT, datefmt="%H:%M:%S"))
    else:
        console.addFilter(console_filter)
        console.setFormatter(ConsoleFormatter())
    handlers: list[logging.Handler] = [console]
    run_log = None
    if folder is not None or folder_later:  # folder_later: the lines wait for `log_to_folder`
        run_log = RunLogHandler(folder, logging.DEBUG if verbose else logging.INFO)
        run_log.setFormatter(logging.Formatter(VERBOSE_FORMAT))
        handlers.append(run_log)
    saved_level, saved_show = root.level, warnings.showwarning
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for handler in handlers:
        root.addHandler(handler)
    warnings.showwarning = _show_warning
    _active, _active_log = console_filter, run_log
    try:
        yield run_log.path if run_log else None
    finally:
        _active, _active_log = None, None
        warnings.showwarning = saved_show
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(saved_level)


class _LinesToLog(io.TextIOBase):
    """A text stream whose every line becomes an INFO record of `logger` (what a step printed, into the log)."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        lines = (self.pending + text).split("\n")
        self.pending = lines.pop()
        for line in lines:
            if line.strip():
                self.logger.info("%s", line)
        return len(text)

    def flush(self) -> None:
        if self.pending.strip():
            self.logger.info("%s", self.pending)
        self.pending = ""


@contextlib.contextmanager
def results_to_log(command: str) -> Iterator[None]:
    """Inside: a command's result lines (printed or logged) go to the log file only; warnings still show.

    `mammokit demo` runs each step like this: the step line it prints says what ran and how long it took, and the
    step's own report (the prepared-image counts, the run folder, the evaluation summary) is in the log file.
    """
    writer = _LinesToLog(logging.getLogger(f"mammokit.cli.{command}"))
    shown = _active.show_results if _active else True
    if _active:
        _active.show_results = False
    try:
        with contextlib.redirect_stdout(writer):
            yield
    finally:
        writer.flush()
        if _active:
            _active.show_results = shown
