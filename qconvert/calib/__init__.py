"""Calibration and evaluation text, forward hooks, and importance / Hessian statistics."""
