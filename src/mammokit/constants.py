"""Label names, view/laterality vocabularies, class indices and compute names shared by every stage."""

from __future__ import annotations

import typing
from typing import Literal

# Image-level classes of the whole-image classifier (index = output unit).
WHOLE_IMAGE_CLASSES: tuple[str, ...] = ("negative", "malignant")

# Patch classes. Order matters: the whole-image heatmap variants copy the patch head row by row.
# Background first, then (calcification, mass) x (benign, malignant), as in Shen et al. Fig. 1.
PATCH_CLASSES_5: tuple[str, ...] = ("background", "calc_benign", "calc_malignant", "mass_benign", "mass_malignant")
PATCH_CLASSES_3: tuple[str, ...] = ("background", "benign", "malignant")

LATERALITIES: tuple[str, ...] = ("L", "R")
# Standard views first; others (XCCL, ML, LM, ...) are kept as read but treated as "other" by subgroup metrics.
VIEWS: tuple[str, ...] = ("CC", "MLO")
SPLITS: tuple[str, ...] = ("train", "val", "test")

LESION_TYPES: tuple[str, ...] = ("mass", "calcification", "other")

# Label value for images whose malignancy is unknown (e.g. unlabelled user data at prediction time).
LABEL_UNKNOWN = -1

# "auto": let mammokit choose on this machine (a device: cuda if available, else cpu; a backend: the fastest
# float32 runtime within the accuracy bar, infer.backend_select).
AUTO = "auto"

# The compute precisions, one spelling everywhere: `--precision` of predict and serve, their config values, the
# `precision` recorded in every output, and `scoring.core.TorchScorer(precision=...)`. float32 is the default:
# the same file gives the same numbers on every CPU (to float32 rounding); bfloat16 only when asked.
Precision = Literal["float32", "bfloat16"]
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)
