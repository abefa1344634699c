"""COCO JSON for boxes: ``images``, ``annotations`` (``bbox`` = x, y, w, h), ``categories``.

One case per image; an image without annotations is a negative case. Image
paths are ``file_name`` relative to the source folder, to an ``images/``
folder in it, or a bare name found anywhere under it. Whether each box fits
its image is checked in ``validate`` against the real image header, and the
JSON's own ``width``/``height`` are checked there too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from handlers.datasets_import.base import (
    SPLIT_ALIASES,
    Candidate,
    ImportAbort,
    ImportOptions,
    Parsed,
    Problem,
    RawBox,
    case_id_from,
    index_files,
    inside,
    labels_file,
    read_text,
)


def parse(root: Path, opts: ImportOptions) -> Parsed:
    if opts.annotation_type not in (None, "boxes"):
        raise ImportAbort(Problem("invalid_option", "COCO JSON describes boxes"))
    path = labels_file(root, opts, (".json",))
    doc = _load(path)
    categories = _categories(doc, path.name)
    classes = list(opts.classes) if opts.classes else list(categories.values())
    files = index_files(root)
    problems: list[Problem] = []
    by_image: dict[Any, Candidate] = {}
    for i, image in enumerate(doc.get("images") or []):
        cand = _image(root, files, image, f"{path.name}:images[{i}]", problems)
        if cand is not None:
            by_image[image["id"]] = cand
    known_ids = {img.get("id") for img in doc.get("images") or []
                 if isinstance(img, dict) and _is_id(img.get("id"))}
    for i, ann in enumerate(doc.get("annotations") or []):
        _annotation(ann, f"{path.name}:annotations[{i}]", by_image, known_ids, categories,
                    problems)
    return Parsed("boxes", classes, list(by_image.values()), problems)


def _load(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise ImportAbort(Problem("invalid_labels_file",
                                  f"{path.name}: not valid JSON ({exc.msg}, line {exc.lineno})"
                                  )) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise ImportAbort(Problem("invalid_labels_file", f"{path.name}: no 'images' list"))
    for key in ("annotations", "categories"):
        if not isinstance(doc.get(key, []), list):
            raise ImportAbort(Problem("invalid_labels_file", f"{path.name}: '{key}' is not a list"))
    return doc


def _categories(doc: dict[str, Any], name: str) -> dict[Any, str]:
    found: dict[Any, str] = {}
    for cat in doc.get("categories") or []:
        if not isinstance(cat, dict) or not _is_id(cat.get("id")) \
                or not str(cat.get("name", "")).strip():
            raise ImportAbort(Problem("invalid_labels_file",
                                      f"{name}: a category lacks an id or a name: {cat!r:.100}"))
        label = str(cat["name"]).strip()
        if label in found.values():
            raise ImportAbort(Problem("invalid_labels_file",
                                      f"{name}: category name {label!r} is used twice"))
        found[cat["id"]] = label
    if not found:
        raise ImportAbort(Problem("invalid_labels_file", f"{name}: no categories"))
    return found


def _image(root: Path, files: dict[str, list[Path]], image: Any, src: str,
           problems: list[Problem]) -> Candidate | None:
    if not isinstance(image, dict) or not _is_id(image.get("id")) or not image.get("file_name"):
        problems.append(Problem("invalid_row", "image entry lacks id or file_name", source=src))
        return None
    file_name = str(image["file_name"])
    case_id = case_id_from(Path(file_name).stem) or case_id_from(f"image_{image['id']}")
    found = _find(root, files, file_name)
    if found is None:
        problems.append(Problem("missing_image", f"{file_name!r} not found in the source",
                                case_id, src))
        return None
    size = None
    if isinstance(image.get("height"), int) and isinstance(image.get("width"), int):
        size = (int(image["height"]), int(image["width"]))
    split = SPLIT_ALIASES.get(str(image.get("split", "")).lower())
    patient = image.get("patient_id")
    return Candidate(case_id=case_id, images=[found], source=src, expected_size=size,
                     split=split, patient_id=str(patient) if patient else None)


def _find(root: Path, files: dict[str, list[Path]], file_name: str) -> Path | None:
    for candidate in (file_name, f"images/{file_name}"):
        path = inside(root, candidate)
        if path is not None and path.is_file():
            return path
    hits = files.get(Path(file_name).name, [])
    return hits[0] if len(hits) == 1 else None


def _annotation(ann: Any, src: str, by_image: dict[Any, Candidate], known_ids: set[Any],
                categories: dict[Any, str], problems: list[Problem]) -> None:
    if not isinstance(ann, dict):
        problems.append(Problem("invalid_row", "annotation is not an object", source=src))
        return
    cand = by_image.get(ann.get("image_id")) if _is_id(ann.get("image_id")) else None
    if cand is None:
        if ann.get("image_id") not in known_ids:
            problems.append(Problem("unknown_image", f"image_id {ann.get('image_id')!r} is not "
                                    "in 'images'", source=src))
        return  # an image already reported as missing: one problem is enough
    category = ann.get("category_id")
    label = categories.get(category) if _is_id(category) else None
    if label is None:
        problems.append(Problem("unknown_label", f"category_id {ann.get('category_id')!r} is "
                                "not in 'categories'", cand.case_id, src))
        return
    bbox = ann.get("bbox")
    if bbox is None or not _numbers(bbox, 4):
        problems.append(Problem("invalid_box", f"bbox {bbox!r:.80} is not [x, y, width, height]",
                                cand.case_id, src))
        return
    x, y, w, h = (float(v) for v in bbox)
    cand.boxes.append(RawBox(label, x, y, x + w, y + h))


def _is_id(value: Any) -> bool:
    """COCO ids are ints (strings tolerated); anything else cannot be a dict key here."""
    return isinstance(value, int | str) and not isinstance(value, bool)


def _numbers(value: Any, n: int) -> bool:
    return (isinstance(value, list) and len(value) == n
            and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                    for v in value))
