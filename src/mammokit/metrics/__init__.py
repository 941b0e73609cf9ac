"""Metrics on arrays only: AUC with clustered-bootstrap CIs, DeLong, operating points, calibration.

Nothing here imports torch or pandas; every function takes NumPy arrays (labels 0/1, scores where
larger means more likely malignant) so that any stage, and the ONNX prediction path, can use them.
"""

from mammokit.metrics.bootstrap import BootstrapResult, bootstrap_ci
from mammokit.metrics.calibration import apply_calibration, ece, fit_platt, fit_temperature, reliability_curve
from mammokit.metrics.curves import OneClassWarning, average_precision, binary_curve, pr_curve, roc_auc
from mammokit.metrics.delong import DeLongResult, delong_auc_ci, delong_covariance, delong_test
from mammokit.metrics.operating import (
    confusion_counts,
    sens_spec_at,
    threshold_at_sensitivity,
    threshold_at_specificity,
    youden_threshold,
)
from mammokit.metrics.summary import binary_report

__all__ = [
    "BootstrapResult",
    "DeLongResult",
    "OneClassWarning",
    "apply_calibration",
    "average_precision",
    "binary_curve",
    "binary_report",
    "bootstrap_ci",
    "confusion_counts",
    "delong_auc_ci",
    "delong_covariance",
    "delong_test",
    "ece",
    "fit_platt",
    "fit_temperature",
    "pr_curve",
    "reliability_curve",
    "roc_auc",
    "sens_spec_at",
    "threshold_at_sensitivity",
    "threshold_at_specificity",
    "youden_threshold",
]
