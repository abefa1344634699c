"""Series-aware import (issue 15 items 1, 3, 4): slice order, series table, patients,
body parts, and the RSNA STR PE layout, on DICOM series built here."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from handlers.datasets_import.base import ImportOptions, Problem
from handlers.datasets_import.pipeline import prepare
from handlers.datasets_import.validate import Validated
from tests.support.dataset_utils import MemoryDatasetRepo
from tests.support.series_data import PeExam, ct_dataset, save, write_pe_dataset


def run(root: Path, fmt: str, **opts: Any) -> Validated:
    result = prepare(root, ImportOptions(name="t", format=fmt, tenant="default", **opts))
    assert not isinstance(result, Problem), result
    return result


def write_labels(root: Path, rows: list[list[str]], header: list[str]) -> None:
    with open(root / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])


def head_series(root: Path, n: int = 5, **extra: Any) -> list[str]:
    """``n`` slices of one series, file names and InstanceNumbers against the anatomy."""
    names = []
    for k in range(n):
        name = f"s{(k * 3) % n}.dcm"  # names out of order
        ds = ct_dataset(np.full((8, 8), 10.0 * k, np.float32), patient=None, study="1.9",
                        series="1.9.1", instance=n - k, position=(0, 0, 2.5 * k), **extra)
        save(ds, root / name)
        names.append(name)
    return names  # names[k] is the k-th slice from the feet


def test_slice_cases_form_an_ordered_series_with_one_patient(tmp_path: Path) -> None:
    names = head_series(tmp_path, BodyPartExamined="HEAD")
    write_labels(tmp_path, [[n, "finding" if i % 2 else "normal"] for i, n in
                            enumerate(reversed(names))], ["image", "label"])
    v = run(tmp_path, "folder-csv")
    assert not v.problems, v.problems
    (info,) = v.series.values()
    assert info.ordered_by == "position" and info.positions == [0.0, 2.5, 5.0, 7.5, 10.0]
    by_id = {c.case_id: c for c in v.good}
    assert [by_id[c].images[0].name for c in info.cases] == names
    assert {c.series for c in v.good} == {"1.9.1"}
    assert {c.patient_id for c in v.good} == {"study-1.9"}  # no PatientID: the study's
    assert v.body_regions == {"head": 5}
    assert not v.warnings


def test_a_stack_case_is_reordered_by_position(tmp_path: Path) -> None:
    names = head_series(tmp_path, BodyPartExamined="CHEST")
    write_labels(tmp_path, [["|".join(sorted(names)), "normal"]], ["image", "label"])
    v = run(tmp_path, "folder-csv", classes=["normal", "finding"], skip_bad=True)
    (case,) = v.good
    assert [p.name for p in case.images] == names
    assert v.body_regions == {"chest": 1}


def test_a_stack_without_geometry_is_ordered_by_instance_number_with_a_warning(
        tmp_path: Path) -> None:
    for k in range(3):
        save(ct_dataset(np.zeros((8, 8)), orientation=None, instance=3 - k, study="1.5",
                        series="1.5.1", BodyPartExamined="HEAD"), tmp_path / f"x{k}.dcm")
    write_labels(tmp_path, [["x0.dcm|x1.dcm|x2.dcm", "normal"]], ["image", "label"])
    v = run(tmp_path, "folder-csv", classes=["normal", "finding"], skip_bad=True)
    assert [p.name for p in v.good[0].images] == ["x2.dcm", "x1.dcm", "x0.dcm"]
    (warning,) = [w for w in v.warnings if w.code == "slice_order"]
    assert "ordered by InstanceNumber" in warning.message


def test_ct_of_unknown_body_part_is_a_warning_with_the_choice(tmp_path: Path) -> None:
    names = head_series(tmp_path)
    write_labels(tmp_path, [[n, "normal" if i < 3 else "finding"] for i, n in enumerate(names)],
                 ["image", "label"])
    v = run(tmp_path, "folder-csv")
    assert v.body_regions == {"unknown": 5}
    (warning,) = [w for w in v.warnings if w.code == "ct_body_part_unknown"]
    assert "preprocessing.windows" in warning.message and "head: brain" in warning.message
    assert not v.fatal


# --- RSNA STR pulmonary embolism ------------------------------------------------------


def pe_exams() -> list[PeExam]:
    return [PeExam([0, 1, 1, 0], {"rightsided_pe": 1, "rv_lv_ratio_lt_1": 1}),
            PeExam([0, 0, 0], {"negative_exam_for_pe": 1}),
            PeExam([0, 0, 0], {"indeterminate": 1, "qa_contrast": 1})]


def test_rsna_pe_layout(tmp_path: Path) -> None:
    exams = pe_exams()
    v = run(write_pe_dataset(tmp_path, exams), "rsna-pe")
    assert not v.problems, v.problems
    assert v.classes == ["normal", "pe"] and v.annotation_type == "single_label"
    assert len(v.good) == 10 and len(v.series) == 3
    by_id = {c.case_id: c for c in v.good}
    for exam in exams:
        info = v.series[exam.series]
        assert info.study_uid == exam.study and info.ordered_by == "position"
        # anatomical order despite shuffled files and reversed InstanceNumbers
        assert info.cases == [sop.replace(".", "_") for sop in exam.sops]
        assert [by_id[c].labels for c in info.cases] == [
            ["pe" if s else "normal"] for s in exam.slices]
        assert {by_id[c].patient_id for c in info.cases} == {by_id[info.cases[0]].patient_id}
    first = v.series[exams[0].series].exam_labels
    assert first["rightsided_pe"] == 1.0 and first["negative_exam_for_pe"] == 0.0
    assert len(first) == 13  # nine scored labels and four QA/descriptive ones
    assert v.series[exams[2].series].exam_labels["qa_contrast"] == 1.0
    assert v.body_regions == {"chest": 10}


def test_rsna_pe_conflicting_exam_rows_and_negative_exam_with_pe(tmp_path: Path) -> None:
    exams = [PeExam([0, 1], {"negative_exam_for_pe": 1}), PeExam([0, 0])]
    root = write_pe_dataset(tmp_path, exams)
    lines = (root / "train.csv").read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if exams[1].series in line)
    lines[row] = lines[row][:-1] + "1"  # indeterminate on one row of the second exam only
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    v = run(root, "rsna-pe", skip_bad=True)
    messages = [p.message for p in v.problems if p.code == "conflicting_label"]
    assert len(messages) == 2
    assert any("indeterminate differ" in m for m in messages)
    assert any("shows PE but the exam is negative" in m for m in messages)
    assert not v.good


def test_rsna_pe_needs_its_columns(tmp_path: Path) -> None:
    write_labels(tmp_path, [["1", "2", "3", "0"]],
                 ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                  "pe_present_on_image"])
    result = prepare(tmp_path, ImportOptions(name="t", format="rsna-pe", tenant="default"))
    assert isinstance(result, Problem) and "negative_exam_for_pe" in result.message


@pytest.mark.parametrize("classes", [["pe", "normal"], ["a", "b"]])
def test_rsna_pe_classes_are_fixed(tmp_path: Path, classes: list[str]) -> None:
    write_pe_dataset(tmp_path, pe_exams()[:1])
    result = prepare(tmp_path, ImportOptions(name="t", format="rsna-pe", tenant="default",
                                             classes=classes))
    assert isinstance(result, Problem) and result.code == "invalid_classes"


def test_the_registered_manifest_keeps_series_exam_labels_and_body_parts(
        tmp_path: Path) -> None:
    import asyncio

    from handlers.datasets_import.pipeline import import_dataset
    from infra.store.local import LocalStore
    from schemas.dataset import DatasetManifest, manifest_key

    exams = pe_exams()
    root = write_pe_dataset(tmp_path / "src", exams)
    store, repo = LocalStore(tmp_path / "store"), MemoryDatasetRepo()
    opts = ImportOptions(name="pe", format="rsna-pe", tenant="default", dataset_id="pe-1")
    report = asyncio.run(import_dataset(store, repo, root, opts))  # type: ignore[arg-type]
    assert report.registered, report.problems
    manifest = DatasetManifest.model_validate_json(store.get_bytes(manifest_key("pe-1")))
    assert set(manifest.series) == {e.series for e in exams}
    assert manifest.series[exams[1].series].exam_labels["negative_exam_for_pe"] == 1.0
    assert all(c.series for c in manifest.cases)
    stats = repo.saved["pe-1"].stats
    assert stats.body_regions == {"chest": 10} and stats.series == 3


def test_rsna_hemorrhage_slices_form_series_and_split_by_patient(tmp_path: Path) -> None:
    from runner.split import assign_splits
    from schemas.dataset import Case

    subtypes = ("subarachnoid", "subdural", "epidural", "intraparenchymal",
                "intraventricular", "any")
    rows = []
    for s in range(4):  # four studies, three slices each; no PatientID in the files
        for k in range(3):
            image = f"ID_{s}{k}"
            save(ct_dataset(np.zeros((8, 8)), patient=None, study=f"1.{s}", series=f"1.{s}.1",
                            instance=k + 1, position=(0, 0, -5.0 * k),
                            StudyDescription="CT HEAD"), tmp_path / f"{image}.dcm")
            rows += [[f"{image}_{t}", str(int(s == 0 and t in ("subdural", "any")))]
                     for t in subtypes]
    write_labels(tmp_path, rows, ["ID", "Label"])
    v = run(tmp_path, "rsna-ich", skip_bad=True)  # epidural etc. have no case: warnings
    assert len(v.series) == 4 and v.body_regions == {"head": 12}
    assert v.series["1.0.1"].cases == ["ID_02", "ID_01", "ID_00"]  # z = -10, -5, 0
    cases = [Case(case_id=c.case_id, images=["x"], labels=c.labels, patient_id=c.patient_id)
             for c in v.good]
    y = np.array([[1.0 if "subdural" in c.labels else 0.0] for c in cases])
    split = assign_splits(cases, y, val_fraction=0.5)
    for info in v.series.values():
        assert len({split[[c.case_id for c in cases].index(i)] for i in info.cases}) == 1
