"""Evaluation: score a model on the prepared splits and real photos, calibrate thresholds, report, promote."""
