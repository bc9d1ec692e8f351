"""Analyses of a trained model that are neither evaluation nor inference: effective receptive fields (paper Fig. 3)."""

from .erf import POINTS, TARGETS, effective_receptive_fields, erf_image, input_gradient, mass_radius, save_erf

__all__ = ["POINTS", "TARGETS", "effective_receptive_fields", "erf_image", "input_gradient", "mass_radius", "save_erf"]
