"""File names derived from user data (image ids, lesion ids, paths in tables) must never leave their folder.

Every id a command turns into a file name (`prepare`: images/<image_id>.png, masks/<lesion_id>.png,
records/<image_id>.json; `patches`: images/<patch_id>.png; `predict`: heatmaps/<image_id>_<kind>.png) passes
`check_file_stem` first, and every relative path read from a table of a prepared folder passes `inside`.
An id is refused, not rewritten: rewriting could make two ids collide and silently overwrite an image.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

MAX_STEM_LENGTH = 200  # leaves room for suffixes within the usual 255-byte file-name limit
# separators, NUL/control characters and the characters Windows forbids in file names
_FORBIDDEN = re.compile(r'[/\\\x00-\x1f\x7f:*?"<>|]')


class UnsafeNameError(ValueError):
    """A file name derived from user data could leave its folder or clash with hidden/temporary files."""


def check_file_stem(name: str, what: str = "id") -> str:
    """`name` if it is safe as a file-name stem inside a folder, else UnsafeNameError saying why.

    Refused: empty or longer than 200 characters, a path separator, NUL or control characters, Windows-reserved
    characters (: * ? " < > |), a leading dot (".." and hidden files) or leading/trailing spaces.
    """
    text = str(name)
    reason = None
    if not text:
        reason = "is empty"
    elif len(text) > MAX_STEM_LENGTH:
        reason = f"is longer than {MAX_STEM_LENGTH} characters"
    elif _FORBIDDEN.search(text):
        reason = 'contains a path separator, a control character or one of : * ? " < > |'
    elif text.startswith("."):
        reason = "starts with a dot"
    elif text != text.strip():
        reason = "starts or ends with a space"
    if reason:
        raise UnsafeNameError(
            f"{what} {text[:80]!r} {reason}, so it cannot be used as a file name inside the output folder; "
            "use letters, digits, '-', '_' and '.'"
        )
    return text


def inside(folder: Path, relative: str | Path, what: str = "path") -> Path:
    """`folder / relative`, refusing absolute paths and paths that climb out of `folder` with `..`.

    The check is on the path as written (a manifest's `images/x.png`), not on where symlinks lead: a prepared
    folder whose `images/` links to another disk is a normal set-up, and whoever can place a symlink inside the
    folder already controls its files. What it stops is a manifest (or a crafted id) naming a file elsewhere.
    """
    text = str(relative)
    rel = Path(text)
    climbs = os.path.normpath(text).replace("\\", "/").split("/")[0] == ".."
    if not text or rel.is_absolute() or climbs or "\x00" in text:
        raise UnsafeNameError(f"{what} {text[:120]!r} points outside {folder}; refused")
    return folder / rel
