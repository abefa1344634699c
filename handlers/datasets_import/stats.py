"""Dataset statistics: class balance, image sizes, patients, splits (DESIGN.md §6).

Computed once at import, where the image headers are at hand, and kept in the
KV summary, so listing and showing a dataset never reads its images.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from schemas.dataset import Case, DatasetStats, SizeStats

COMMON_SIZES = 10


def dataset_stats(cases: Sequence[Case], classes: Sequence[str],
                  sizes: Sequence[tuple[int, int]] | None = None) -> DatasetStats:
    """Statistics of registered cases; ``sizes`` (rows, cols) per case when known."""
    n = len(cases)
    per_class = Counter(x for c in cases for x in set(c.labels) | {b.label for b in c.boxes})
    boxes = Counter(b.label for c in cases for b in c.boxes)
    patients = {c.patient_id for c in cases if c.patient_id}
    splits = Counter(c.split or "unassigned" for c in cases)
    return DatasetStats(
        num_images=sum(len(c.images) for c in cases),
        class_counts={k: per_class[k] for k in classes},
        positive_rate={k: round(per_class[k] / n, 6) if n else 0.0 for k in classes},
        box_counts={k: boxes[k] for k in classes} if boxes else {},
        image_sizes=size_stats(sizes) if sizes else None,
        patients=len(patients),
        cases_without_patient=sum(1 for c in cases if not c.patient_id),
        splits={k: splits[k] for k in ("train", "val", "test", "unassigned")},
    )


def size_stats(sizes: Sequence[tuple[int, int]]) -> SizeStats:
    arr = np.asarray(sizes, dtype=np.int64)
    common = Counter(f"{r}x{c}" for r, c in sizes).most_common(COMMON_SIZES)
    return SizeStats(
        min_rows=int(arr[:, 0].min()), max_rows=int(arr[:, 0].max()),
        median_rows=float(np.median(arr[:, 0])),
        min_cols=int(arr[:, 1].min()), max_cols=int(arr[:, 1].max()),
        median_cols=float(np.median(arr[:, 1])),
        common=dict(common),
    )
