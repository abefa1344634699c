"""Hostile images for the decoding budget (issue 17): small files that declare huge pixels.

Each declares 23,170 x 23,170 8-bit pixels (536,848,900 bytes: just under the
512 MiB decoded-size check) with a RescaleSlope, so a reader that trusts it
would hold several GiB (the native array, a float rescale, a float32 copy).
Built by hand, streaming, so the test itself never holds the pixels.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

SIDE = 23_170
CHUNK = 1 << 24


def _header(side: int) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.PatientID = "hostile"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = side
    ds.Columns = side
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "0.5"
    return ds


def _preamble(syntax: UID, ds: pydicom.Dataset) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    buf = pydicom.filebase.DicomBytesIO()
    buf.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    return buf.getvalue()


def _elements(ds: pydicom.Dataset) -> bytes:
    buf = pydicom.filebase.DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return buf.getvalue()


def deflated_dicom(path: Path, side: int = SIDE) -> Path:
    """Deflated Explicit VR Little Endian: the whole dataset (zeros) is zlib-compressed."""
    ds = _header(side)
    nbytes = side * side  # even for an even side: no padding byte
    pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, nbytes)
    deflate = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    full, rest = divmod(nbytes, CHUNK)
    with open(path, "wb") as fh:
        fh.write(_preamble(DeflatedExplicitVRLittleEndian, ds))
        fh.write(deflate.compress(_elements(ds) + pixel_header) + deflate.flush(zlib.Z_FULL_FLUSH))
        # After a full flush the compressor starts afresh: equal chunks compress to equal
        # bytes, so one chunk is compressed and its bytes repeated (seconds saved per file).
        block = deflate.compress(bytes(CHUNK)) + deflate.flush(zlib.Z_FULL_FLUSH)
        for _ in range(full):
            fh.write(block)
        fh.write(deflate.compress(bytes(rest)) + deflate.flush())
    return path


def rle_dicom(path: Path, side: int = SIDE) -> Path:
    """RLE Lossless, one segment: each row is PackBits runs of zeros (about 8 MB)."""
    ds = _header(side)
    full, rest = divmod(side, 128)
    row = np.tile(np.array([0x81, 0x00], np.uint8), full).tobytes()  # 128 zeros per pair
    if rest:
        row += bytes([(257 - rest) & 0xFF, 0x00])
    segment = row * side
    header = struct.pack("<16I", 1, 64, *([0] * 14))
    fragment = header + segment + (b"\0" if len(segment) % 2 else b"")
    body = io.BytesIO()
    body.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF))
    body.write(struct.pack("<HHI", 0xFFFE, 0xE000, 0))  # empty basic offset table
    body.write(struct.pack("<HHI", 0xFFFE, 0xE000, len(fragment)))
    body.write(fragment)
    body.write(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    with open(path, "wb") as fh:
        fh.write(_preamble(RLELossless, ds))
        fh.write(_elements(ds))
        fh.write(body.getvalue())
    return path


def native_dicom(path: Path, side: int, *, bits: int = 16) -> Path:
    """A plain (uncompressed) image of ``side`` x ``side`` with a rescale: an honest file."""
    ds = _header(side)
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    dtype = np.uint16 if bits == 16 else np.uint8
    ds.PixelData = (np.arange(side * side, dtype=np.uint32) % 4000).astype(dtype).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path
