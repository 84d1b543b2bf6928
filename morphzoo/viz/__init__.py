"""Figures: error heat-map renders and cumulative error curves."""

from morphzoo.viz.render import plot_cumulative_error, render_error_map

__all__ = ["plot_cumulative_error", "render_error_map"]
