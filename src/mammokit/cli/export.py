"""`mammokit export RUN [--format onnx] [--opset N] [--out FILE]`: a run's model as ONNX for torch-free serving."""

from __future__ import annotations

import argparse
from pathlib import Path

from mammokit.cli.common import UserError, add_command


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers,
        "export",
        help="export a run's model to ONNX (dynamic batch; output = p(malignant))",
        description=(
            "Export a trained run to ONNX. The graph takes the normalised (batch, 1, H, W) float32 image "
            "(exactly what the predictor feeds the torch model) and returns p(malignant) per image, so "
            "`mammokit predict --backend onnx` needs only onnxruntime and NumPy. The export is checked "
            "against torch on a random batch (max |dp| must be <= --tolerance) before it is kept."
        ),
    )
    p.add_argument("run", type=Path, metavar="RUN", help="run folder (holds model.json + model.safetensors)")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="export format (only onnx for now)")
    p.add_argument("--opset", type=int, default=None, metavar="N", help="ONNX opset version (default 18)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="FILE",
        help="file to write (default RUN/model.onnx, where `mammokit predict --backend onnx` looks for it)",
    )
    p.add_argument(
        "--tolerance", type=float, default=1e-4, help="largest allowed |p_onnx - p_torch| in the check (default 1e-4)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from mammokit.infer.onnx import DEFAULT_OPSET, export_onnx
    from mammokit.run import RunFolderError

    try:
        path, diff = export_onnx(args.run, args.out, opset=args.opset or DEFAULT_OPSET, tolerance=args.tolerance)
    except RunFolderError as exc:
        raise UserError(str(exc)) from None
    logging.getLogger(__name__).info("exported %s (parity vs torch: max |dp| = %.2e)", path, diff)
    return 0
