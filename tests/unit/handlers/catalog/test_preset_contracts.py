"""Contract per preset: a fixed DICOM -> the preset's preprocessing -> a pinned checksum.

A preset promises its preprocessing (windows, size, photometric handling) to
every model trained with it; a change that alters the tensor would silently
invalidate those models, so the exact output is pinned here, alongside the
physical checks (known HU values land where the windows say they must).
Changing a pinned hash is a deliberate act: a new preset version, not a fix.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

from handlers.catalog.presets import get_preset
from handlers.enrich import WeightsRef, enrich
from imaging.reader import read_image
from imaging.transforms import preprocess
from schemas.spec import Preprocessing
from tests.support.factories import dataset, request

SIZE = 64
CT_QUADRANTS = {"top_left": -1000.0, "top_right": 40.0, "bottom_left": 100.0,
                "bottom_right": 600.0}
"""HU per quadrant: air, brain, contrast-filled vessel, dense bone edge."""

PINNED = {
    "intracranial-hemorrhage":
        "b27469651c56fefd002b5cbc3edcc0648b8482e429cce5d18dc5e05660d81e67",
    "pulmonary-embolism":
        "0a6d27c8fc90d5ae1659508e89d4daae67d542b8a8def57f5fe61fe36de7b725",
    "pneumothorax":
        "757e82895222d1575095a17742aae81259ab4cb485e96db2ca467f76b68146f0",
}


class Weights:
    def find(self, entry_id: str) -> WeightsRef:
        return WeightsRef(f"zoo/weights/{entry_id}.safetensors", "a" * 64)


def preprocessing_of(preset_id: str, modality: str, classes: list[str]) -> Preprocessing:
    """Exactly what the specialized flow pins in the spec, at the preset's own size."""
    annotation = get_preset(preset_id).annotation_types[0]
    spec = enrich(request(flow="specialized", task_type=None, model=None, preset=preset_id),
                  dataset(modality=modality, classes=classes, annotation_type=annotation),
                  Weights())
    assert spec.preprocessing.image_size == get_preset(preset_id).image_size == 512
    return spec.preprocessing


def ct_hu() -> np.ndarray:
    hu = np.zeros((SIZE, SIZE), dtype=np.float32)
    h = SIZE // 2
    hu[:h, :h], hu[:h, h:] = CT_QUADRANTS["top_left"], CT_QUADRANTS["top_right"]
    hu[h:, :h], hu[h:, h:] = CT_QUADRANTS["bottom_left"], CT_QUADRANTS["bottom_right"]
    hu[h - 2:h + 2, :] = np.linspace(-1024, 3000, SIZE)  # a ramp across every window
    return hu


def write_dicom(path: Path, pixels: np.ndarray, modality: str,
                photometric: str = "MONOCHROME2") -> Path:
    """A minimal valid file: CT as signed stored values with intercept -1024 (like scanners)."""
    meta = FileMetaDataset()
    sop_class = CTImageStorage if modality == "CT" else DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = uid = generate_uid(entropy_srcs=[path.name])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, uid, modality
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    if modality == "CT":
        ds.PixelRepresentation, ds.RescaleSlope, ds.RescaleIntercept = 1, 1, -1024
        stored = np.round(pixels + 1024).astype(np.int16)
    else:
        ds.PixelRepresentation = 0
        stored = np.round(pixels).astype(np.uint16)
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def digest(x: np.ndarray) -> str:
    return hashlib.sha256(np.round(x.astype(np.float32), 4).astype(np.float32).tobytes()
                          ).hexdigest()


def centre(x: np.ndarray, quadrant: str) -> np.ndarray:
    """Per-channel value at the middle of a quadrant (far from the resize's blur)."""
    q = x.shape[1] // 4
    row = q if quadrant.startswith("top") else 3 * q
    col = q if quadrant.endswith("left") else 3 * q
    return x[:, row, col]


def window_value(hu: float, center: float, width: float) -> float:
    return float(np.clip((hu - (center - width / 2)) / width, 0, 1))


@pytest.mark.parametrize("preset_id", ["intracranial-hemorrhage", "pulmonary-embolism"])
def test_ct_presets_window_known_hu_values_and_are_pinned(preset_id: str,
                                                           tmp_path: Path) -> None:
    classes = ["subdural", "any"] if preset_id.startswith("intra") else ["normal", "pe"]
    prep = preprocessing_of(preset_id, "CT", classes)
    image = read_image(write_dicom(tmp_path / "ct.dcm", ct_hu(), "CT"))
    assert image.pixels[0, 0] == -1000.0  # rescaled to HU by the reader
    x = preprocess(image, prep)
    assert x.shape == (3, 512, 512) and x.dtype == np.float32
    for quadrant, hu in CT_QUADRANTS.items():
        want = [window_value(hu, w.center, w.width) for w in prep.windows]
        assert centre(x, quadrant) == pytest.approx(want, abs=1e-5), quadrant
    assert digest(x) == PINNED[preset_id]


def test_hemorrhage_windows_put_blood_brain_and_bone_where_expected(tmp_path: Path) -> None:
    prep = preprocessing_of("intracranial-hemorrhage", "CT", ["subdural"])
    x = preprocess(read_image(write_dicom(tmp_path / "ct.dcm", ct_hu(), "CT")), prep)
    brain, subdural, _ = centre(x, "top_right")  # 40 HU: mid-grey in the brain window
    assert (brain, subdural) == pytest.approx((0.5, 0.3))
    assert centre(x, "top_left").tolist() == [0.0, 0.0, 0.0]  # air is black everywhere
    assert centre(x, "bottom_right")[:2].tolist() == [1.0, 1.0]  # bone saturates soft windows
    assert centre(x, "bottom_right")[2] == pytest.approx(0.5)  # ... and is mid-bone-window


def test_pneumothorax_handles_monochrome1_and_is_pinned(tmp_path: Path) -> None:
    prep = preprocessing_of("pneumothorax", "DX", ["normal", "pneumothorax"])
    raw = np.full((SIZE, SIZE), 3000.0, dtype=np.float32)  # body: high attenuation
    raw[8:56, 8:28] = 1000.0  # a lung: low attenuation
    raw[8:56, 36:56] = 500.0  # a lung with pleural air: lower still
    mono2 = preprocess(read_image(write_dicom(tmp_path / "m2.dcm", raw, "DX")), prep)
    mono1 = preprocess(read_image(write_dicom(tmp_path / "m1.dcm", 4095 - raw, "DX",
                                              "MONOCHROME1")), prep)
    assert mono2.shape == (3, 512, 512)
    np.testing.assert_allclose(mono1, mono2, atol=1e-6)  # inverted back: air stays dark
    body, lung, air = mono2[0, 4, 256], mono2[0, 256, 128], mono2[0, 256, 370]
    assert body == pytest.approx(1.0) and air == pytest.approx(0.0)
    assert lung == pytest.approx(0.2, abs=1e-4)  # (1000 - 500) / (3000 - 500)
    assert digest(mono1) == PINNED["pneumothorax"]
