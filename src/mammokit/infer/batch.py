"""The batch loop of prediction: files -> reader processes -> batches -> the model, going on past bad files.

`FilePredictions` gives a single run (`Predictor`) and an ensemble (`infer.ensemble.EnsemblePredictor`) the same
`predict` and `predict_many` over `predict_stream`; the reader worker processes receive the `Preprocessor` only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mammokit.infer.config import HeatmapKind
from mammokit.infer.inputs import InputItem, collect_inputs
from mammokit.infer.preprocessor import Preprocessor
from mammokit.infer.results import Prediction, PredictionFailure, PreparedImage

if TYPE_CHECKING:
    from tqdm import tqdm

log = logging.getLogger(__name__)


class FilePredictions:
    """`predict` (one file) and `predict_many` (a stream that goes on past bad files) for a single run
    (`Predictor`) and an ensemble (`infer.ensemble.EnsemblePredictor`) alike.

    A subclass provides `reader` (the `Preprocessor` that reads and prepares every file), `pairs_views`,
    `check_heatmap` and `predict_prepared`.
    """

    reader: Preprocessor

    @property
    def pairs_views(self) -> bool:
        """Whether a model here is bilateral: each file is then scored beside its partner (`infer.pairing`)."""
        raise NotImplementedError

    def check_heatmap(self, heatmap: str) -> None:
        raise NotImplementedError

    def predict_prepared(self, batch: Sequence[PreparedImage], heatmap: HeatmapKind = "none") -> list[Prediction]:
        raise NotImplementedError

    def predict(
        self, image_path: str | Path, heatmap: HeatmapKind = "none", *, image_id: str | None = None
    ) -> Prediction:
        """Predict one file; errors propagate (use `predict_many` for batches that must go on)."""
        self.check_heatmap(heatmap)
        path = Path(image_path)
        item = InputItem(path=path, image_id=image_id or path.stem, source=str(path))
        prepared = self.reader.load_image(item, keep_pixels=heatmap != "none")
        return self.predict_prepared([prepared], heatmap)[0]

    def predict_many(
        self,
        inputs: Iterable[str | Path | InputItem],
        heatmap: HeatmapKind = "none",
        *,
        batch_size: int = 4,
        workers: int = 0,
        keep_pixels: bool | None = None,
        progress: bool = False,
    ) -> Iterator[tuple[Prediction | PredictionFailure, PreparedImage | None]]:
        """Predict a stream of files in batches; a bad file yields a `PredictionFailure` and the rest go on.

        Args:
            inputs: paths, folders/CSV lists (expanded by `collect_inputs`) or `InputItem`s.
            heatmap: "none", "gradcam", "patch" or "both".
            batch_size: images per forward pass.
            workers: reader processes (decoding runs isolated from this process; 0 = one).
            keep_pixels: keep the original pixels in the yielded `PreparedImage` (for overlays);
                default: when heatmaps are requested.
            progress: show a tqdm progress bar on stderr.

        Yields:
            `(result, prepared)`: first a failure for each input `collect_inputs` refused (stage "input"),
            then the others in input order; `prepared` is None for failures.
        """
        self.check_heatmap(heatmap)
        yield from predict_stream(
            self.reader, inputs, heatmap, self.predict_prepared,
            batch_size=batch_size, workers=workers, keep_pixels=keep_pixels, progress=progress,
            pair=self.pairs_views,
        )  # fmt: skip


PredictBatch = Callable[[Sequence[PreparedImage], HeatmapKind], Sequence[Prediction]]


def predict_stream(
    reader: Preprocessor,
    inputs: Iterable[str | Path | InputItem],
    heatmap: HeatmapKind,
    predict_batch: PredictBatch,
    *,
    batch_size: int = 4,
    workers: int = 0,
    keep_pixels: bool | None = None,
    progress: bool = False,
    pair: bool = False,
) -> Iterator[tuple[Prediction | PredictionFailure, PreparedImage | None]]:
    """Read and prepare `inputs` with `reader`'s preprocessing, and predict them in batches with `predict_batch`.

    pair: a bilateral model: every file is read first, each is paired with the same view of the other breast
    among all the call's files (`infer.pairing`), then they are scored. The prepared images of the whole call
    are then held in memory (2 bytes a pixel: 2 MB per 1152x896 image).

    The batch loop behind `Predictor.predict_many` and `EnsemblePredictor.predict_many` (`infer.ensemble`), kept
    in one place so that one run and an ensemble read each file once and treat bad files alike: a file that
    cannot be read yields a "read" failure, a batch the model fails on is retried one image at a time so only the
    culprit yields a "model" failure, and the rest go on. Arguments and yields as in `Predictor.predict_many`.
    """
    given = list(inputs)
    if all(isinstance(i, InputItem) for i in given):
        items: list[InputItem] = given  # type: ignore[assignment]
    elif any(isinstance(i, InputItem) for i in given):
        raise TypeError("predict_many takes either InputItems or paths, not a mix")
    else:
        items = collect_inputs(given)  # type: ignore[arg-type]
    keep = heatmap != "none" if keep_pixels is None else keep_pixels
    from tqdm.auto import tqdm

    bar = tqdm(total=len(items), unit="img", desc="predict", disable=not progress)
    try:
        batch: list[PreparedImage] = []
        held: list[PreparedImage] = []  # pair=True: every prepared image of the call, paired before scoring
        for _item, prepared in read_stream(reader, items, keep, workers):
            if isinstance(prepared, PredictionFailure):
                bar.update(1)
                yield prepared, None
                continue
            (held if pair else batch).append(prepared)
            if len(batch) >= batch_size:
                yield from _run_batch(predict_batch, batch, heatmap, bar)
                batch = []
        if held:
            from mammokit.infer.pairing import attach_partners

            attach_partners(held)
            for start in range(0, len(held), batch_size):
                yield from _run_batch(predict_batch, held[start : start + batch_size], heatmap, bar)
        if batch:
            yield from _run_batch(predict_batch, batch, heatmap, bar)
    finally:
        bar.close()


def _run_batch(
    predict_batch: PredictBatch, batch: list[PreparedImage], heatmap: HeatmapKind, bar: tqdm
) -> Iterator[tuple[Prediction | PredictionFailure, PreparedImage | None]]:
    try:
        results: list[Prediction | PredictionFailure] = list(predict_batch(batch, heatmap))
    except Exception as exc:
        if len(batch) == 1:
            log.warning("the model failed on one image (%s); reported with its result", type(exc).__name__)
            p = batch[0]
            error = f"{type(exc).__name__}: {exc}"
            results = [PredictionFailure(p.item.image_id, str(p.item.path), "model", error)]
        else:  # find the culprit: one at a time, so the others still get predicted
            for p in batch:
                yield from _run_batch(predict_batch, [p], heatmap, bar)
            return
    for r, p in zip(results, batch, strict=True):
        bar.update(1)
        yield r, (p if isinstance(r, Prediction) else None)


def read_stream(
    reader: Preprocessor, items: Sequence[InputItem], keep: bool, workers: int
) -> Iterator[tuple[InputItem, PreparedImage | PredictionFailure]]:
    """Read and prepare `items` with `reader` in input order, in `workers` (at least 1) reader *processes*.

    Files we were handed are decoded in child processes (`mammokit.utils.pool`): a decoder that panics or
    aborts, or a file that exhausts memory, costs that one file (a "read" failure), never the batch or the
    model in this process. At most 2 files per reader are in flight, so memory stays at a few decoded
    mammograms (~50 MB each for a 4500x2800 scan when heatmaps keep the original pixels).
    """
    from mammokit.utils.pool import TaskFailed, run_isolated

    usable = [item for item in items if item.error is None]
    tasks = [(item, keep) for item in usable]
    for item in items:  # inputs collect_inputs already refused: reported, never read
        if item.error is not None:
            yield item, PredictionFailure(item.image_id, str(item.path), "input", item.error)
    for index, result in run_isolated(
        _read_task, tasks, workers=max(1, workers), initializer=_init_reader, initargs=(reader,), ordered=True
    ):
        item = usable[index]
        if isinstance(result, TaskFailed):
            # the reason goes with the result (errors.csv); the log gets its type only: the message names the
            # file and may quote a header value (issue 25: neither belongs in a log)
            log.warning("cannot read input %d (%s)", index + 1, result.reason.split(":", 1)[0])
            result = PredictionFailure(item.image_id, str(item.path), "read", result.reason)
        yield item, result


# --- reader processes (see read_stream): each holds the `Preprocessor` only, never a model --------------------------

_READER: Preprocessor | None = None


def _init_reader(reader: Preprocessor) -> None:
    global _READER
    _READER = reader


def _read_task(task: tuple[InputItem, bool]) -> PreparedImage:
    item, keep = task
    assert _READER is not None, "_init_reader runs first in every reader process"
    return _READER.load_image(item, keep_pixels=keep)
