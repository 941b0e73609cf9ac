"""mammokit: breast-cancer detection on screening mammograms.

Public API (imported lazily so that `import mammokit` stays light):

* `read_mammogram(path)` -> (pixels, MammoMeta)
* `Predictor.from_run(run_dir)` -> predictions and heatmaps for new images
* `load_model(run_dir)` -> (torch model, ModelCard)
* `create_model(name, **kwargs)`
"""

from __future__ import annotations

from typing import Any

from mammokit.version import __version__

__all__ = ["Predictor", "__version__", "create_model", "load_model", "read_mammogram"]


def __getattr__(name: str) -> Any:
    if name == "read_mammogram":
        from mammokit.io.dicom import read_mammogram

        return read_mammogram
    if name == "Predictor":
        from mammokit.infer.predictor import Predictor

        return Predictor
    if name == "load_model":
        from mammokit.run import load_model

        return load_model
    if name == "create_model":
        from mammokit.models.registry import create_model

        return create_model
    raise AttributeError(f"module 'mammokit' has no attribute {name!r}")
