"""Metrics on arrays only: AUC with clustered-bootstrap CIs, DeLong, operating points, calibration."""
