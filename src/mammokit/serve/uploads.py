"""Uploads of `POST /v1/predict`: a multipart body parsed in memory, with limits, and checks before decoding.

Starlette's own form parser spools files over 1 MB to a temporary file on disk; the service must write
nothing to disk, so the body is streamed through python-multipart's parser here and every part is kept
in memory, under limits that are checked while the bytes arrive (the upload is refused as soon as a file
passes its size limit, not after it has been received).

Before any pixel is decoded, `precheck` looks at the header only: an empty file, content that is no
image format (the bytes decide, never the file name), declared dimensions over the server's pixel limit,
or declared (uncompressed) pixel data larger than the file itself - a forged or truncated header that
would otherwise make the decoder allocate gigabytes. Everything else is checked by `read_mammogram`,
exactly as for `mammokit predict`.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from mammokit.io.dicom import sniff_bytes

FILE_FIELD = "files"
TEXT_FIELDS: frozenset[str] = frozenset({"laterality", "view", "heatmap", "inline"})
MAX_TEXT_FIELD_BYTES = 1024
MAX_TEXT_FIELDS = 16  # laterality + view per file, heatmap, inline: a few; more is not a real client
# Encapsulated (compressed) pixel data ends with a Sequence Delimitation Item, (FFFE,E0DD) + zero length,
# little endian; only trailing padding may follow it.
_ENCAPSULATED_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_DEFLATED_SYNTAX = "1.2.840.10008.1.2.1.99"
_NATIVE_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"})


class UploadError(Exception):
    """A request the service refuses; `status` is the HTTP status, the message says what was wrong."""

    def __init__(self, status: int, message: str, *, errors: list[dict] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors or []


@dataclass
class UploadedFile:
    index: int  # position among the uploaded files (0-based)
    filename: str  # as the client named it (returned to the client, never logged)
    data: bytes


@dataclass
class PredictForm:
    files: list[UploadedFile] = field(default_factory=list)
    fields: dict[str, list[str]] = field(default_factory=dict)

    @property
    def n_bytes(self) -> int:
        return sum(len(f.data) for f in self.files)


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    name: str = ""
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)


async def within_deadline(
    stream: AsyncIterator[bytes], *, timeout_s: float, min_rate_bytes_s: float
) -> AsyncIterator[bytes]:
    """`stream`'s chunks, or UploadError 408 when the body arrives too slowly.

    The rule of Apache's mod_reqtimeout (`body=20,MinRate=...`): the whole body must have arrived `timeout_s`
    seconds after the first read, plus 1 s per `min_rate_bytes_s` bytes received so far. A client trickling
    1 byte/s is cut off after about `timeout_s`; a fast upload of any size never is. The wait for each chunk is
    bounded by the deadline too, so a client that sends nothing at all is cut off as well.
    """
    start = time.monotonic()
    received = 0
    iterator = stream.__aiter__()
    while True:
        remaining = start + timeout_s + received / min_rate_bytes_s - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            chunk = await asyncio.wait_for(iterator.__anext__(), remaining)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise UploadError(
                408,
                f"the upload arrived too slowly ({received} bytes in {time.monotonic() - start:.0f} s; this server "
                f"needs the body within {timeout_s:g} s plus 1 s per {min_rate_bytes_s / 1e3:g} kB): send it again "
                "over a faster connection",
            ) from None
        received += len(chunk)
        yield chunk


def _clean_filename(raw: str) -> str:
    """Base name only (clients may send full paths), printable, at most 200 characters."""
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable())
    return name[:200] or "unnamed"


async def parse_predict_form(
    content_type: str | None, stream: AsyncIterator[bytes], *, max_file_bytes: int, max_files: int
) -> PredictForm:
    """Parse a multipart/form-data body into memory.

    Raises:
        UploadError: 415 not multipart; 413 a file over `max_file_bytes`; 400 a body that ends before its
            closing boundary (incomplete); 422 more than `max_files` files, an unknown field, an over-long text
            field, or a malformed body; and whatever `stream` raises (e.g. 408 from `within_deadline`).
    """
    from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

    ctype, params = parse_options_header(content_type or "")
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise UploadError(
            415,
            f"expected a multipart/form-data upload, got {content_type or 'no Content-Type'!r}; "
            f"send the images as multipart field {FILE_FIELD!r}",
        )
    form = PredictForm()
    parts: list[_Part] = []
    state: dict[str, bytes] = {"field": b"", "value": b""}

    def on_part_begin() -> None:
        if len(parts) >= max_files + MAX_TEXT_FIELDS:
            raise UploadError(422, f"too many form fields (more than {max_files + MAX_TEXT_FIELDS} parts)")
        parts.append(_Part())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        parts[-1].headers[state["field"].lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_headers_finished() -> None:
        part = parts[-1]
        disposition, options = parse_options_header(part.headers.get(b"content-disposition", b""))
        if disposition != b"form-data" or b"name" not in options:
            raise UploadError(422, "a multipart part has no Content-Disposition: form-data; name=...")
        part.name = options[b"name"].decode("utf-8", "replace")
        if b"filename" in options:
            part.filename = _clean_filename(options[b"filename"].decode("utf-8", "replace"))
            if part.name != FILE_FIELD:
                raise UploadError(422, f"file part named {part.name!r}; send images as multipart field {FILE_FIELD!r}")
            n_files = sum(1 for p in parts if p.filename is not None)
            if n_files > max_files:
                raise UploadError(
                    422,
                    f"more than {max_files} files: a request holds one image or one exam of at most {max_files} views",
                )
        elif part.name not in TEXT_FIELDS:
            raise UploadError(
                422,
                f"unknown form field {part.name!r}; the fields are {FILE_FIELD!r} (files) and "
                f"{', '.join(sorted(TEXT_FIELDS))}",
            )

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part = parts[-1]
        part.data += data[start:end]
        if part.filename is not None and len(part.data) > max_file_bytes:
            raise UploadError(
                413,
                f"file {part.filename!r} is larger than the limit of {max_file_bytes / 1e6:g} MB per file",
            )
        if part.filename is None and len(part.data) > MAX_TEXT_FIELD_BYTES:
            raise UploadError(422, f"form field {part.name!r} is longer than {MAX_TEXT_FIELD_BYTES} bytes")

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data,
    }
    parser = MultipartParser(params[b"boundary"], callbacks)  # type: ignore[arg-type]
    try:
        async for chunk in stream:
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except UploadError:
        raise
    except Exception as exc:  # python-multipart raises its own errors on malformed bodies
        raise UploadError(422, f"malformed multipart body ({type(exc).__name__}: {exc})") from None
    if parser.state != MultipartState.END:
        # python-multipart's finalize() accepts a body cut off anywhere; a body without its closing
        # "--BOUNDARY--" is an interrupted upload, and its last file may be cut short
        raise UploadError(
            400,
            "the multipart body ends before its closing boundary ('--BOUNDARY--'): the upload is incomplete or was "
            "cut off; send it again",
        )
    for part in parts:
        if part.filename is not None:
            form.files.append(UploadedFile(len(form.files), part.filename, bytes(part.data)))
        else:
            form.fields.setdefault(part.name, []).append(part.data.decode("utf-8", "replace").strip())
    if not form.files:
        raise UploadError(
            422,
            f"no file uploaded: send one image or the views of one exam as multipart field {FILE_FIELD!r} "
            "(DICOM, PNG, PGM or JPEG)",
        )
    return form


def precheck(upload: UploadedFile, *, max_pixels: int) -> None:
    """Header-only checks before decoding (see the module docstring); raises UploadError 413/422."""
    label = f"file {upload.index + 1} ({upload.filename})"
    data = upload.data
    if not data:
        raise UploadError(422, f"{label}: empty file (0 bytes); choose the image file again")
    kind = sniff_bytes(data[:132])
    if kind is None:
        raise UploadError(
            422,
            f"{label}: not a DICOM, PNG, PGM or JPEG image (the content has no DICOM 'DICM' marker and no image "
            "signature, whatever the file name says)",
        )
    rows, cols, expected, encapsulated = _declared_size(kind, data)
    if rows is None or cols is None:
        return  # the header could not be parsed: read_mammogram reports what is wrong
    if rows * cols > max_pixels:
        raise UploadError(
            413,
            f"{label}: declares {rows} x {cols} pixels ({rows * cols / 1e6:.0f} MP), more than this server's limit "
            f"of {max_pixels / 1e6:.0f} MP per image (--max-megapixels)",
        )
    if encapsulated and _ENCAPSULATED_END not in data[-65536:]:
        raise UploadError(
            422,
            f"{label}: the compressed pixel data has no end marker (sequence delimiter): the file is truncated; "
            "send the complete file",
        )
    if expected is not None and expected > len(data):
        raise UploadError(
            422,
            f"{label}: the header declares {rows} x {cols} pixels ({expected / 1e6:.1f} MB of pixel data) but the "
            f"file holds only {len(data) / 1e6:.1f} MB: it is truncated or its header is wrong",
        )


def _declared_size(kind: str, data: bytes) -> tuple[int | None, int | None, int | None, bool]:
    """(rows, columns, bytes of uncompressed pixel data or None, encapsulated?) from the header alone."""
    if kind == "dicom":
        from mammokit.io.dicom import dcmread_bounded

        try:
            # bounded: pydicom alone inflates a whole deflated dataset even to read its header (a 432 KB upload
            # became 400 MB here before read_mammogram's own bounded read ever ran)
            ds = dcmread_bounded(io.BytesIO(data), stop_before_pixels=True)
            rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            samples = int(ds.get("SamplesPerPixel", 1) or 1)
            bits = int(ds.get("BitsAllocated", 16) or 16)
            syntax = str(getattr(ds, "file_meta", {}).get("TransferSyntaxUID", ""))
        except Exception:  # damaged header: read_mammogram says so precisely
            return None, None, None, False
        native = syntax in _NATIVE_SYNTAXES
        expected = rows * cols * frames * samples * bits // 8 if native else None
        encapsulated = not native and syntax != _DEFLATED_SYNTAX
        return rows, cols, expected, encapsulated
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:  # lazy: reads the header, decodes nothing
            width, height = im.size
    except Image.DecompressionBombError as exc:  # over twice Pillow's own pixel limit
        raise UploadError(413, f"image too large to decode safely ({exc})") from None
    except Exception:
        return None, None, None, False
    return int(height), int(width), None, False
