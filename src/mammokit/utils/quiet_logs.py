"""Keep third-party messages that quote DICOM header values out of every log (issue 25).

pydicom logs (and warns) about each damaged element with its value: `Invalid value for VR IS: 'SMITH^JOHN'`.
A level set on its logger does not last: `import pydicom` runs `pydicom.config.debug(False)`, which resets the
level to WARNING, so a program that set it before pydicom was first imported (lazily, by the first read)
printed those values after all. A *filter* on the logger is not touched by that reset, so `quiet_pydicom`
installs one; its threshold can be changed by calling it again (`-v` shows pydicom's messages for debugging).
"""

from __future__ import annotations

import logging
import warnings

_NAME = "pydicom"


class _Below(logging.Filter):
    """Drops records under `threshold` whatever level the logger has been (re)set to."""

    def __init__(self, threshold: int) -> None:
        super().__init__()
        self.threshold = threshold

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.threshold


def quiet_pydicom(*, verbose: bool = False) -> None:
    """Silence pydicom's logger for good (every record, as its messages quote header values) and its warnings, or, with
    `verbose`, let everything through (a user debugging a file on their own machine asked for it with -v)."""
    logger = logging.getLogger(_NAME)
    threshold = logging.DEBUG if verbose else logging.CRITICAL + 1
    for existing in logger.filters:
        if isinstance(existing, _Below):
            existing.threshold = threshold
            break
    else:
        logger.addFilter(_Below(threshold))
    logger.setLevel(logging.DEBUG if verbose else logging.CRITICAL)  # cheap early exit until pydicom resets it
    if not verbose:
        # pydicom also `warnings.warn`s each message (misc.warn_and_log), which a run's log file would record
        warnings.filterwarnings("ignore", module=r"pydicom(\..*)?")
