"""Class colours, one palette for case previews and for the runner's prediction plots.

Class ``i`` (0-based, in the dataset's class order) is drawn in the same
colour in a preview of its ground truth and in a plot of the model's
predictions, so the two can be compared at a glance.
"""

from __future__ import annotations

PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 64, 64), (64, 200, 64), (64, 128, 255), (255, 200, 0), (200, 64, 255),
    (0, 220, 220), (255, 128, 0), (255, 64, 200), (160, 255, 64), (128, 128, 255),
)


def class_colour(index: int) -> tuple[int, int, int]:
    """RGB colour of class ``index`` (0-based); the palette repeats after ten classes."""
    return PALETTE[index % len(PALETTE)]
