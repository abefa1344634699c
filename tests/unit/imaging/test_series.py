"""Series order along the slice normal, its fallbacks, multi-frame order, body regions
(imaging/series.py), on files built here and on pydicom's corpus."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.data import get_testdata_file

from imaging.reader import read_header
from imaging.series import (
    SliceGeometry,
    body_region,
    geometry_of,
    group_series,
    neighbours,
    order_frames,
    order_slices,
    region_of_text,
)
from tests.support.series_data import ct_dataset, per_frame_positions, save

OBLIQUE = (1.0, 0.0, 0.0, 0.0, np.cos(0.3), -np.sin(0.3))


def test_order_is_the_position_along_the_normal_not_instance_or_name(tmp_path: Path) -> None:
    normal = np.cross(OBLIQUE[:3], OBLIQUE[3:])
    distances = [30.0, -10.0, 20.0, 0.0, 10.0]
    geoms, names = [], []
    base = np.array([5.0, -7.0, 2.0])
    for i, d in enumerate(distances):
        pos = base + d * normal
        ds = ct_dataset(np.zeros((4, 4)), instance=i + 1, position=pos, orientation=OBLIQUE,
                        study="1.2", series="1.2.3")
        geoms.append(read_header(save(ds, tmp_path / f"z{i}.dcm")).geometry)
        names.append(f"z{i}.dcm")
    ordering = order_slices(geoms, names)  # type: ignore[arg-type]
    assert ordering.by == "position" and ordering.note is None
    assert ordering.order == [1, 3, 4, 2, 0]
    offset = float(base @ normal)
    assert ordering.positions == pytest.approx([d + offset for d in sorted(distances)], abs=1e-4)


def test_falls_back_to_instance_number_then_file_name_and_says_why() -> None:
    g = [SliceGeometry(instance_number=n) for n in (3, 1, 2)]
    by_instance = order_slices(g, ["a", "b", "c"])
    assert by_instance.by == "instance_number" and by_instance.order == [1, 2, 0]
    assert "ImageOrientationPatient" in (by_instance.note or "")
    by_name = order_slices([SliceGeometry(), SliceGeometry(instance_number=1)], ["b", "a"])
    assert by_name.by == "file_name" and by_name.order == [1, 0]
    assert "InstanceNumber missing" in (by_name.note or "")
    partial = [SliceGeometry(position=(0, 0, 1), orientation=(1, 0, 0, 0, 1, 0),
                             instance_number=2), SliceGeometry(instance_number=1)]
    assert "missing on 1 of 2" in (order_slices(partial, ["x", "y"]).note or "")


def test_duplicate_positions_fall_back() -> None:
    axial = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    g = [SliceGeometry(position=(0, 0, 0), orientation=axial, instance_number=n) for n in (2, 1)]
    ordering = order_slices(g, ["a", "b"])
    assert ordering.by == "instance_number" and "share" in (ordering.note or "")


def test_multi_frame_order_from_per_frame_positions(tmp_path: Path) -> None:
    frames = np.stack([np.full((4, 4), v, np.float32) for v in (10, 20, 30)])
    ds = ct_dataset(frames, position=None)
    per_frame_positions(ds, [(0, 0, 20), (0, 0, 0), (0, 0, 10)])
    geometry = read_header(save(ds, tmp_path / "mf.dcm")).geometry
    assert geometry is not None and geometry.orientation == (1, 0, 0, 0, 1, 0)
    ordering = order_frames(geometry, 3)
    assert ordering.by == "position" and ordering.order == [1, 2, 0]
    assert order_frames(SliceGeometry(), 3).by == "frames"


def test_groups_by_study_and_series() -> None:
    keys = [("s1", "a"), ("s1", "b"), None, ("s1", "a")]
    groups, loose = group_series(keys, lambda k: k)
    assert groups == {("s1", "a"): [0, 3], ("s1", "b"): [1]} and loose == [2]


def test_neighbours_clamp_at_the_ends() -> None:
    assert neighbours(0, 5) == [0, 0, 1]
    assert neighbours(4, 5) == [3, 4, 4]
    assert neighbours(0, 1) == [0, 0, 0]


@pytest.mark.parametrize(("text", "region"), [
    ("HEAD", "head"), ("CT HEAD WO CONTRAST", "head"), ("Brain", "head"),
    ("CHEST", "chest"), ("CTPA", "chest"), ("CT pulmonary angiogram", "chest"),
    ("ABDOMEN", "abdomen"), ("CT ABD PELVIS", "abdomen"),
    ("CHEST ABDOMEN PELVIS", None), ("WHOLE BODY", None), ("", None), (None, None),
])
def test_body_region_words(text: str | None, region: str | None) -> None:
    assert region_of_text(text) == region


def test_body_part_wins_over_the_descriptions() -> None:
    g = SliceGeometry(body_part="HEAD", study_description="CHEST CT")
    assert body_region(g) == "head"
    assert body_region(SliceGeometry(body_part="XYZ", study_description="CT CHEST")) == "chest"


def test_pydicom_corpus_geometry_never_raises_and_reads_known_values() -> None:
    corpus = Path(pydicom.data.__file__).parent / "test_files"  # local: no download attempts
    for path in sorted(corpus.rglob("*.dcm")):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:
            continue  # files the corpus keeps broken on purpose
        geometry_of(ds)
    ct = geometry_of(pydicom.dcmread(str(get_testdata_file("CT_small.dcm"))))
    assert ct.series_key is not None and ct.position is not None
    assert ct.orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    overlay = geometry_of(pydicom.dcmread(corpus / "examples_overlay.dcm"))
    assert body_region(overlay) == "abdomen"
    liver = geometry_of(pydicom.dcmread(corpus / "liver_1frame.dcm"))
    assert liver.frame_positions is not None and len(liver.frame_positions) == 3
