"""Evaluation metrics."""

from sepid.metrics.verification import (
    det_curve,
    eer,
    min_dcf,
    tar_at_far,
    verification_metrics,
)

__all__ = ["det_curve", "eer", "min_dcf", "tar_at_far", "verification_metrics"]
