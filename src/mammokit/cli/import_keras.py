"""`mammokit import-keras MODEL.h5 --out RUN`: run the authors' released Keras 2 models in mammokit.

Examples:
  mammokit import-keras 'ddsm_resnet50_s10_[512-512-1024]x2.h5' --out runs/ddsm-resnet50
  mammokit import-keras inbreast_vgg16_512x1.h5 --out runs/inbreast-vgg16          # mean 44.33 from the name
  mammokit import-keras patch_model_s10.h5 --out runs/patch --input-size 224x224 --task patch

The file is read with h5py only (no TensorFlow/Keras). The run folder works with `mammokit predict`,
`evaluate`, `export` and `finetune` like any trained run. See docs/keras-import.md.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from mammokit.cli.common import UserError, add_command, add_out


def _size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH, e.g. 1152x896; got {text!r}")
    return int(m.group(1)), int(m.group(2))


def _names(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of names")
    return names


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "import-keras",
        help="convert a released Keras 2 .h5 model (Shen et al.) into a run folder",
        description=__doc__,
    )
    p.add_argument("model", type=Path, metavar="MODEL.h5", help="Keras 2 full-model HDF5 file")
    add_out(p, help="run folder to write (must not hold a model yet)")
    p.add_argument("--task", choices=("auto", "whole", "patch"), default="auto",
                   help="whole-image or patch classifier (auto: nested trunk model or 2 outputs = whole)")  # fmt: skip
    p.add_argument("--input-size", type=_size, metavar="HxW", help="input size instead of the stored one")
    p.add_argument("--mean", type=float, default=None,
                   help="featurewise mean on the 0..255 scale (default: 44.33 if the file name contains "
                        "'inbreast', else 52.18, the CBIS-DDSM value)")  # fmt: skip
    p.add_argument("--rescale", type=float, default=None, help="16-bit value -> 0..255 factor (default 0.003891)")
    p.add_argument("--interpolation", choices=("bicubic", "area", "bilinear"), default="bicubic",
                   help="resize filter (default bicubic, as the original's resize)")  # fmt: skip
    p.add_argument("--labels", type=_names, metavar="A,B,..", help="class names of the outputs, in order")
    p.add_argument("--positive-labels", type=_names, metavar="A,..", help="labels that mean malignant")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mammokit.engine.keras_import import RESCALE_16BIT, KerasImportOptions, import_keras
    from mammokit.io.keras_h5 import KerasImportError

    options = KerasImportOptions(
        task=args.task,
        input_size=args.input_size,
        mean=args.mean,
        rescale=args.rescale if args.rescale is not None else RESCALE_16BIT,
        interpolation=args.interpolation,
        labels=args.labels,
        positive_labels=args.positive_labels,
    )
    try:
        result = import_keras(args.model, args.out, options)
    except (KerasImportError, FileExistsError) as exc:
        raise UserError(str(exc)) from None
    card = result.card
    inp = card.input
    print(f"imported {args.model.name} (Keras {card.notes['keras_version']}, {card.notes['keras_backend']})")
    print(f"  task {card.task}: {result.n_layers} layers, {result.n_parameters:,} parameters, "
          f"trunk output {card.notes['trunk_output']}")  # fmt: skip
    print(f"  weights: {result.counts['tensors']} stored tensors used exactly once, all parameters filled")
    print(f"  labels {card.labels} (malignant: {card.positive_labels})")
    mean = inp.preprocess.extra["keras_import"]["featurewise_mean"]
    print(f"  input {inp.height}x{inp.width}, whole image (no crop, no flip), {inp.preprocess.interpolation} resize, "
          f"x{options.rescale} - {mean}, grayscale replicated to 3 channels")  # fmt: skip
    print(f"  run folder: {result.run_dir}")
    return 0
