"""Each importer on small datasets built here, and every validation check by its case."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image

from handlers.datasets_import.base import ImportOptions, Problem
from handlers.datasets_import.pipeline import prepare
from handlers.datasets_import.siim import decode_runs
from handlers.datasets_import.validate import Validated
from tests.support.dataset_utils import (
    classification_folder,
    ct,
    mask_to_absolute_rle,
    mask_to_relative_rle,
    write_csv,
    write_dicom,
    write_json,
    write_png,
)


def run(root: Path, fmt: str, **opts: Any) -> Validated:
    result = prepare(root, ImportOptions(name="t", format=fmt, tenant="default",  # type: ignore[arg-type]
                                         **opts))
    assert not isinstance(result, Problem), result
    return result


def problems(v: Validated) -> set[tuple[str, str | None]]:
    return {(p.code, p.case_id) for p in v.problems}


# --- folder + labels CSV -------------------------------------------------------


def test_folder_csv_names_layout_single_label(tmp_path: Path) -> None:
    v = run(classification_folder(tmp_path), "folder-csv")
    assert not v.problems and not v.fatal
    assert v.annotation_type == "single_label" and v.classes == ["finding", "normal"]
    assert v.modality == "CT" and len(v.good) == 6
    case = next(c for c in v.good if c.case_id == "c3")
    assert case.labels == ["finding"] and case.patient_id == "P1"  # from the DICOM header
    assert case.headers[0].rows == 16


def test_folder_csv_one_hot_multi_label_with_patients_and_splits(tmp_path: Path) -> None:
    rows = []
    for i in range(4):
        write_png(tmp_path / f"img{i}.png", np.full((20, 30), i * 60, dtype=np.uint8))
        rows.append([f"img{i}.png", f"pat{i % 2}", "train" if i % 2 else "val",
                     int(i > 0), int(i % 2)])
    write_csv(tmp_path / "labels.csv", ["file", "patient_id", "split", "effusion", "nodule"],
              rows)
    v = run(tmp_path, "folder-csv")
    assert not v.problems
    assert v.annotation_type == "multi_label" and v.classes == ["effusion", "nodule"]
    assert v.modality == "other"  # PNG says nothing; grayscale is not a photo
    by_id = {c.case_id: c for c in v.good}
    assert by_id["img0"].labels == [] and by_id["img3"].labels == ["effusion", "nodule"]
    assert by_id["img1"].split == "train" and by_id["img1"].patient_id == "pat1"


def _claim_size(path: Path, side: int) -> Path:
    """Rewrite Rows/Columns: a header that promises far more pixels than the file holds."""
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = side
    ds.save_as(path)
    return path


def test_folder_csv_reports_every_problem_with_its_case(tmp_path: Path) -> None:
    root = classification_folder(tmp_path, n=4)
    (root / "images" / "c1.dcm").write_bytes((root / "images" / "c1.dcm").read_bytes()[:-100])
    (root / "images" / "c2.dcm").write_text("not an image at all" * 20)
    ct(root / "images" / "stray.dcm")  # no row
    ct(root / "images" / "mr.dcm", modality="MR")
    nopix = pydicom.dcmread(ct(root / "images" / "nopix.dcm"))
    del nopix.PixelData
    nopix.save_as(root / "images" / "nopix.dcm")
    _claim_size(write_dicom(root / "images" / "huge.dcm", np.zeros((4, 4), np.float32)), 2000)
    write_csv(root / "labels.csv", ["image", "label", "patient_id", "split"], [
        ["images/c0.dcm", "normal", "PA", "train"],
        ["images/c1.dcm", "finding", "PB", ""],
        ["images/c2.dcm", "normal", "PC", ""],
        ["images/c3.dcm", "tumour", "PD", ""],
        ["images/c3.dcm", "finding", "PE", ""],
        ["images/missing.dcm", "normal", "PF", ""],
        ["images/mr.dcm", "finding", "PG", ""],
        ["images/huge.dcm", "normal", "PA", "val"],
        ["images/nopix.dcm", "normal", "PH", ""],
    ])
    v = run(root, "folder-csv", classes=["normal", "finding", "other"],
            max_image_bytes=1_000_000)
    found = problems(v)
    assert {("truncated", "c1"), ("not_image", "c2"), ("missing_label", "stray"),
            ("duplicate_case", "c3"), ("missing_image", "missing"),
            ("mixed_modality", "mr"), ("too_large", "huge"), ("no_pixel_data", "nopix")
            } <= found
    assert ("empty_class", None) in found  # 'other' has no example
    assert v.fatal and all(p.message for p in v.problems)
    assert any("c1.dcm" in (p.source or "") for p in v.problems if p.code == "truncated")


def test_unknown_and_ambiguous_labels_and_split_leak(tmp_path: Path) -> None:
    for i in range(4):
        ct(tmp_path / f"a{i}.dcm", patient="same" if i < 2 else f"p{i}")
    write_csv(tmp_path / "labels.csv", ["image", "label", "split"], [
        ["a0.dcm", "normal", "train"], ["a1.dcm", "finding", "val"],
        ["a2.dcm", "normal|finding", ""], ["a3.dcm", "tumour", ""]])
    v = run(tmp_path, "folder-csv", classes=["normal", "finding"], annotation_type="single_label")
    found = problems(v)
    assert {("split_leak", "a0"), ("split_leak", "a1"), ("ambiguous_label", "a2"),
            ("unknown_label", "a3")} <= found


def test_skip_bad_keeps_the_good_cases_and_records_why(tmp_path: Path) -> None:
    root = classification_folder(tmp_path, n=6)
    (root / "images" / "c4.dcm").write_bytes(b"\x00" * 300)
    v = run(root, "folder-csv", skip_bad=True)
    assert not v.fatal and {c.case_id for c in v.good} == {"c0", "c1", "c2", "c3", "c5"}
    assert [s.case_id for s in v.skipped] == ["c4"] and "c4.dcm" in v.skipped[0].reason
    assert run(root, "folder-csv").fatal  # all or nothing by default


def test_image_size_is_refused_from_the_header_before_decoding(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    # claims 1.8 GB once decoded; the file stays tiny
    _claim_size(write_dicom(tmp_path / "big.dcm", np.zeros((8, 8), np.float32)), 30000)
    write_csv(tmp_path / "labels.csv", ["image", "label"], [["big.dcm", "x"]])
    monkeypatch.setattr("handlers.datasets_import.validate.read_image",
                        lambda *a, **k: pytest.fail("decoded a file refused by its header"))
    v = run(tmp_path, "folder-csv", decode="auto")
    assert ("too_large", "big") in problems(v)


@pytest.mark.parametrize(("names", "modality"), [
    (["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
      "MR_small_bigendian.dcm", "MR_small.dcm"], "MR"),
    (["SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_jpeg_gdcm.dcm", "SC_rgb_rle.dcm", "SC_rgb_gdcm_KY.dcm",
      "JPEGLSNearLossless_08.dcm"], "other"),
])
def test_compressed_dicoms_and_pillow_formats_import(tmp_path: Path, names: list[str],
                                                      modality: str) -> None:
    """RLE, JPEG 2000, JPEG-LS, JPEG baseline and JPEG Lossless DICOM, PNG and JPEG."""
    from pydicom.data import get_testdata_file

    rows = []
    for name in names:
        (tmp_path / name).write_bytes(Path(str(get_testdata_file(name))).read_bytes())
        rows.append([name, "x"])
    write_png(tmp_path / "x.png", np.zeros((8, 8), np.uint8))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "y.jpg")
    rows += [["x.png", "x"], ["y.jpg", "x"]]
    write_csv(tmp_path / "labels.csv", ["image", "label"], rows)
    v = run(tmp_path, "folder-csv", decode="always")
    assert not v.problems and v.modality == modality and len(v.good) == 7


# --- RSNA intracranial hemorrhage ----------------------------------------------

SUB = ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")


def _rsna_rows(image: str, positives: set[str], any_value: int | None = None) -> list[list[str]]:
    rows = [[f"{image}_{s}", str(int(s in positives))] for s in SUB]
    anyv = int(bool(positives)) if any_value is None else any_value
    return [*rows, [f"{image}_any", str(anyv)]]


def test_rsna_layout(tmp_path: Path) -> None:
    rows = []
    for i, pos in enumerate([set(), {"subdural"}, {"epidural", "subarachnoid"}]):
        ct(tmp_path / "stage_2_train" / f"ID_{i:09x}.dcm", patient=f"ID_p{i}")
        rows += _rsna_rows(f"ID_{i:09x}", pos)
    rows += _rsna_rows("ID_000000001", {"subdural"})  # published CSVs repeat rows
    ct(tmp_path / "stage_2_train" / "ID_0000000aa.dcm")
    rows += _rsna_rows("ID_0000000aa", {"subdural"}, any_value=0)  # contradicts itself
    rows += _rsna_rows("ID_0000000bb", set())  # no image
    rows += [["ID_0000000cc_subdural", "1"]]  # the other subtypes are missing
    rows += [["ID_0000000cc_hematoma", "1"]]
    write_csv(tmp_path / "stage_2_train.csv", ["ID", "Label"], rows)
    v = run(tmp_path, "rsna-ich")
    assert v.annotation_type == "multi_label"
    assert v.classes == ["subarachnoid", "subdural", "epidural", "intraparenchymal",
                         "intraventricular"]
    by_id = {c.case_id: c for c in v.good}
    assert by_id["ID_000000002"].labels == ["subarachnoid", "epidural"]
    assert by_id["ID_000000000"].labels == [] and by_id["ID_000000000"].patient_id == "ID_p0"
    assert {("conflicting_label", "ID_0000000aa"), ("missing_image", "ID_0000000bb"),
            ("missing_label", "ID_0000000cc"), ("unknown_label", "ID_0000000cc")
            } <= problems(v)
    # nobody has intraparenchymal: multi-label, so a warning (issue 15), not a problem
    assert ("empty_class", None) not in problems(v)
    assert any(w.code == "empty_class" and "intraparenchymal" in w.message
               for w in v.warnings)


# --- COCO boxes ------------------------------------------------------------------


def test_coco_boxes(tmp_path: Path) -> None:
    for name in ("a", "b", "c", "d"):
        write_png(tmp_path / "images" / f"{name}.png", np.zeros((40, 60), np.uint8))
    doc = {
        "images": [{"id": i, "file_name": f"{n}.png", "width": 60, "height": 40}
                   for i, n in enumerate("abcd", start=1)],
        "categories": [{"id": 7, "name": "nodule"}, {"id": 9, "name": "mass"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 5, 20, 10]},
            {"id": 2, "image_id": 1, "category_id": 9, "bbox": [0, 0, 60.4, 40]},  # clipped
            {"id": 3, "image_id": 3, "category_id": 7, "bbox": [50, 30, 20, 20]},  # outside
            {"id": 4, "image_id": 4, "category_id": 5, "bbox": [1, 1, 2, 2]},
            {"id": 5, "image_id": 42, "category_id": 7, "bbox": [1, 1, 2, 2]},
        ]}
    doc["images"][1]["width"] = 61  # the JSON disagrees with the file
    write_json(tmp_path / "annotations.json", doc)
    v = run(tmp_path, "coco", skip_bad=True)
    assert v.annotation_type == "boxes" and v.classes == ["nodule", "mass"]
    good = {c.case_id: c for c in v.good}
    assert set(good) == {"a"}
    assert [(b.label, b.x_min, b.y_min, b.x_max, b.y_max) for b in good["a"].boxes] == [
        ("nodule", 10, 5, 30, 15), ("mass", 0, 0, 60, 40)]
    assert {("size_mismatch", "b"), ("box_outside", "c"), ("unknown_label", "d")
            } <= problems(v)
    assert any(p.code == "unknown_image" for p in v.problems)


# --- mask images -----------------------------------------------------------------


def test_mask_images(tmp_path: Path) -> None:
    for name in ("a", "b", "c", "d", "e"):
        ct(tmp_path / "images" / f"{name}.dcm", size=16, patient=name)
    two = np.zeros((16, 16), np.uint8)
    two[2:6, 2:6], two[8:12, 8:12] = 1, 2
    write_png(tmp_path / "masks" / "a.png", two)
    write_png(tmp_path / "masks" / "b.png", np.zeros((16, 16), np.uint8))
    write_png(tmp_path / "masks" / "c.png", np.zeros((8, 16), np.uint8))  # wrong size
    write_png(tmp_path / "masks" / "d.png", np.full((16, 16), 3, np.uint8))  # no class 3
    write_png(tmp_path / "masks" / "orphan.png", two)
    v = run(tmp_path, "masks", classes=["liver", "lesion"])
    assert {("mask_size", "c"), ("unknown_label", "d"), ("missing_label", "e"),
            ("missing_image", "orphan")} <= problems(v)
    good = {c.case_id: c for c in v.good}
    assert good["a"].labels == ["liver", "lesion"] and good["b"].labels == []
    decoded = np.asarray(Image.open(io.BytesIO(good["a"].mask_png or b"")))
    assert np.array_equal(decoded, two)


def test_binary_255_mask_means_the_one_class(tmp_path: Path) -> None:
    ct(tmp_path / "images" / "a.dcm", size=16)
    m = np.zeros((16, 16), np.uint8)
    m[4:8, 4:8] = 255
    write_png(tmp_path / "masks" / "a.png", m)
    v = run(tmp_path, "masks")
    assert not v.problems and v.classes == ["foreground"] and v.good[0].labels == ["foreground"]


# --- SIIM run-length CSV ----------------------------------------------------------


def _siim(tmp_path: Path, layout: str = "relative") -> tuple[Path, np.ndarray]:
    mask = np.zeros((16, 16), np.uint8)
    mask[3:7, 2:5], mask[10:12, 9:15] = 1, 1
    encode = mask_to_relative_rle if layout == "relative" else mask_to_absolute_rle
    uid = "1.2.276.0.7230010.3.1.4.8323329.1"
    ct(tmp_path / "train" / "s1" / f"{uid}.dcm", size=16, modality="DX")
    ct(tmp_path / "train" / "s2" / "1.2.3.dcm", size=16, modality="DX")
    ct(tmp_path / "train" / "s3" / "9.9.dcm", size=16, modality="DX")
    top, bottom = mask.copy(), mask.copy()
    top[8:], bottom[:8] = 0, 0
    write_csv(tmp_path / "train-rle.csv", ["ImageId", " EncodedPixels"], [
        [uid, encode(top)], [uid, encode(bottom)],  # two rows for one image: united
        ["1.2.3", "-1"], ["9.9", "1 300"]])
    return tmp_path, mask


@pytest.mark.parametrize("layout", ["relative", "absolute"])
def test_siim_run_length_masks(tmp_path: Path, layout: str) -> None:
    root, mask = _siim(tmp_path, layout)
    v = run(root, "siim-rle", rle=layout)
    assert v.annotation_type == "masks" and v.classes == ["pneumothorax"] and v.modality == "DX"
    good = {c.case_id: c for c in v.good}
    uid = "1_2_276_0_7230010_3_1_4_8323329_1"
    decoded = np.asarray(Image.open(io.BytesIO(good[uid].mask_png or b"")))
    assert np.array_equal(decoded, mask)
    assert good["1_2_3"].labels == []
    assert ("mask_size", "9_9") in problems(v)  # 300 pixels do not fit 16x16


def test_siim_as_single_label(tmp_path: Path) -> None:
    root, _ = _siim(tmp_path)
    v = run(root, "siim-rle", annotation_type="single_label")
    labels = {c.case_id: c.labels for c in v.good}
    assert labels["1_2_3"] == ["normal"] and labels["9_9"] == ["ptx"]


def test_rle_decoding_rejects_garbage() -> None:
    from handlers.datasets_import.base import MaskError

    for text in ("1 2 3", "a b", "-1 4"):
        with pytest.raises(MaskError):
            decode_runs(text, "relative", 100)
    starts, ends = decode_runs("2 3 1 2", "relative", 100)
    assert starts.tolist() == [2, 6] and ends.tolist() == [5, 8]


def test_source_without_labels_file_is_one_clear_problem(tmp_path: Path) -> None:
    ct(tmp_path / "a.dcm")
    result = prepare(tmp_path, ImportOptions(name="t", format="folder-csv", tenant="t"))
    assert isinstance(result, Problem) and result.code == "missing_labels_file"
    result = prepare(tmp_path, ImportOptions(name="t", format="coco", tenant="t",
                                             labels="../etc/passwd"))
    assert isinstance(result, Problem) and result.code == "missing_labels_file"
