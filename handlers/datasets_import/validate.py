"""Every check an import makes before anything is registered (DESIGN.md §6).

Per case: a valid and unique id; each image readable from its header (and
decoded where only a decode can prove it intact, see ``needs_decode``); a
stack of one size; labels known, and exactly one for single-label data; boxes
inside the image; a mask of the image's size with known class values. Over
the dataset: one modality (CR and DX count as one), every class with an
example, no patient in two splits, at least one case.

A problem names its case (or the file/row it came from). Problems without
either concern the whole dataset and fail the import even with ``skip_bad``.
"""

from __future__ import annotations

import io
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from handlers.datasets_import.base import Candidate, ImportOptions, MaskError, Parsed, Problem, rel
from imaging.reader import CaseReadError, ImageHeader, read_header, read_image
from schemas.common import is_identifier
from schemas.dataset import AnnotationType, Box, SeriesInfo, SkippedCase
from schemas.tasks import Modality

BOX_TOLERANCE_PX = 1.0
"""Annotation tools round; a box this far past the border is clipped, further is an error."""
_PHOTO = {"XC", "ES", "GM", "SM", "OP", "OT_PHOTO"}


@dataclass
class ValidCase:
    case_id: str
    images: list[Path]
    headers: list[ImageHeader]
    source: str
    labels: list[str] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    mask_png: bytes | None = None
    patient_id: str | None = None
    split: str | None = None
    series: str | None = None
    """Its series' key when the case is one slice of it (series_step.py, issue 15)."""


@dataclass
class Validated:
    annotation_type: AnnotationType
    classes: list[str]
    modality: Modality | None
    good: list[ValidCase]
    problems: list[Problem]
    skipped: list[SkippedCase]
    fatal: bool
    """Nothing may be registered: a dataset-level problem, or any problem without skip_bad."""
    warnings: list[Problem] = field(default_factory=list)
    """Registered anyway, shown in the report (a multi-label class with no positive case)."""
    series: dict[str, SeriesInfo] = field(default_factory=dict)
    """Series whose slices are cases, in order (series_step.py, issue 15)."""
    body_regions: dict[str, int] | None = None
    """Body region -> cases of a CT/MR dataset (series_step.py); None: not recorded."""


HeaderReader = Callable[[list[Candidate]], list[list[ImageHeader] | CaseReadError]]


def validate(parsed: Parsed, opts: ImportOptions, root: Path,
             read_headers: HeaderReader | None = None) -> Validated:
    """Run every check; ``read_headers`` lets the caller read images in parallel."""
    problems = list(parsed.problems)
    classes = parsed.classes
    if len(set(classes)) != len(classes) or not all(c.strip() for c in classes):
        problems.append(Problem("invalid_classes", f"classes {classes} must be distinct names"))
    cands = _unique_ids(parsed.candidates, problems)
    reader = read_headers or (lambda cs: [headers_of(c, opts, root) for c in cs])
    good: list[ValidCase] = []
    for cand, headers in zip(cands, reader(cands), strict=True):
        if isinstance(headers, CaseReadError):
            problems.append(Problem(headers.kind, headers.reason, cand.case_id, headers.source))
            continue
        case = _check_case(cand, headers, parsed.annotation_type, classes, problems)
        if case is not None:
            good.append(case)
    modality = _modality(good, opts.modality, problems)
    bad = {p.case_id for p in problems if p.case_id}
    good = [c for c in good if c.case_id not in bad]
    good = _split_leaks(good, problems)
    warnings: list[Problem] = []
    _empty_classes(good, classes, parsed.annotation_type,
                   warnings if parsed.annotation_type == "multi_label" else problems)
    if not good:
        problems.append(Problem("no_cases", "no case passed validation"))
    fatal = any(p.case_id is None and p.source is None for p in problems)
    return Validated(parsed.annotation_type, classes, modality, good, problems,
                     _skipped(problems) if opts.skip_bad else [],
                     fatal or (bool(problems) and not opts.skip_bad), warnings)


def needs_decode(header: ImageHeader, opts: ImportOptions) -> bool:
    """Native DICOM is proven by its header's lengths; compressed data only by decoding."""
    if opts.decode != "auto":
        return opts.decode == "always"
    return header.compressed or header.format != "dicom"


def headers_of(cand: Candidate, opts: ImportOptions, root: Path
               ) -> list[ImageHeader] | CaseReadError:
    """Read (and where needed decode) each image of a case; the first failure is returned."""
    out = []
    for path in cand.images:
        source = rel(root, path)
        try:
            header = read_header(path, max_bytes=opts.max_image_bytes, source=source)
            if needs_decode(header, opts):
                read_image(path, max_bytes=opts.max_image_bytes, source=source)
        except CaseReadError as exc:
            return exc
        out.append(header)
    return out


def _unique_ids(cands: list[Candidate], problems: list[Problem]) -> list[Candidate]:
    counts = Counter(c.case_id for c in cands)
    sources: dict[str, list[str]] = defaultdict(list)
    for c in cands:
        sources[c.case_id].append(c.source)
    kept = []
    for c in cands:
        if not is_identifier(c.case_id):
            problems.append(Problem("invalid_case_id", f"case id {c.case_id!r} is empty or too "
                                    "long after cleaning", c.case_id or None, c.source))
        elif counts[c.case_id] > 1:
            others = ", ".join(s for s in sources[c.case_id] if s != c.source)
            problems.append(Problem("duplicate_case", f"case id {c.case_id!r} is also used by "
                                    f"{others}", c.case_id, c.source))
        else:
            kept.append(c)
    return kept


def _check_case(cand: Candidate, headers: list[ImageHeader], annotation: AnnotationType,
                classes: list[str], problems: list[Problem]) -> ValidCase | None:
    before = len(problems)
    mid = headers[len(headers) // 2]
    if len({(h.rows, h.cols) for h in headers}) > 1:
        sizes = sorted({f"{h.rows}x{h.cols}" for h in headers})
        problems.append(Problem("stack_mismatch", f"images of one case differ in size {sizes}",
                                cand.case_id, cand.source))
    if cand.expected_size and cand.expected_size != (mid.rows, mid.cols):
        problems.append(Problem("size_mismatch", f"labels say {cand.expected_size[0]}x"
                                f"{cand.expected_size[1]}, the image is {mid.rows}x{mid.cols}",
                                cand.case_id, cand.source))
    case = ValidCase(cand.case_id, cand.images, headers, cand.source,
                     patient_id=cand.patient_id or mid.patient_id, split=cand.split)
    known = set(classes)
    if annotation in ("single_label", "multi_label"):
        case.labels = _labels(cand, annotation, known, problems)
    elif annotation == "boxes":
        case.boxes = _boxes(cand, mid, known, problems)
        case.labels = sorted({b.label for b in case.boxes}, key=classes.index)
    elif cand.mask is not None:
        case.mask_png, present = _mask(cand, mid, len(classes), problems)
        case.labels = [classes[i - 1] for i in present]
    return case if len(problems) == before else None


def _labels(cand: Candidate, annotation: AnnotationType, known: set[str],
            problems: list[Problem]) -> list[str]:
    unknown = [label for label in cand.labels if label not in known]
    if unknown:
        problems.append(Problem("unknown_label", f"labels {unknown} are not among the classes "
                                f"{sorted(known)}", cand.case_id, cand.source))
    labels = list(dict.fromkeys(cand.labels))
    if annotation == "single_label" and len(labels) != 1:
        code = "missing_label" if not labels else "ambiguous_label"
        problems.append(Problem(code, f"a single-label case needs exactly one label, has "
                                f"{labels or 'none'}", cand.case_id, cand.source))
    return labels


def _boxes(cand: Candidate, header: ImageHeader, known: set[str],
           problems: list[Problem]) -> list[Box]:
    out = []
    rows, cols, tol = header.rows, header.cols, BOX_TOLERANCE_PX
    for b in cand.boxes:
        where = f"box {b.label} [{b.x_min:g}, {b.y_min:g}, {b.x_max:g}, {b.y_max:g}]"
        if b.label not in known:
            problems.append(Problem("unknown_label", f"{where}: class {b.label!r} is not among "
                                    f"{sorted(known)}", cand.case_id, cand.source))
        elif b.x_max <= b.x_min or b.y_max <= b.y_min:
            problems.append(Problem("invalid_box", f"{where} has no area", cand.case_id,
                                    cand.source))
        elif b.x_min < -tol or b.y_min < -tol or b.x_max > cols + tol or b.y_max > rows + tol:
            problems.append(Problem("box_outside", f"{where} lies outside the {cols}x{rows} "
                                    "(width x height) image", cand.case_id, cand.source))
        else:
            out.append(Box(label=b.label, x_min=max(b.x_min, 0.0), y_min=max(b.y_min, 0.0),
                           x_max=min(b.x_max, float(cols)), y_max=min(b.y_max, float(rows))))
    return out


def _mask(cand: Candidate, header: ImageHeader, n_classes: int,
          problems: list[Problem]) -> tuple[bytes | None, list[int]]:
    assert cand.mask is not None
    try:
        arr = cand.mask.load(header.rows, header.cols, n_classes)
    except MaskError as exc:
        problems.append(Problem(exc.code, exc.message, cand.case_id, cand.mask.source))
        return None, []
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format="PNG", compress_level=6)
    present = [int(v) for v in np.unique(arr) if v > 0]
    return buf.getvalue(), present


def modality_of(header: ImageHeader) -> Modality | None:
    """The manifest's modality for one image; None when the file does not say (PNG/JPEG)."""
    code = header.modality
    if header.format != "dicom" or not code:
        return None
    if code in ("CT", "CR", "DX", "MR"):
        return code  # type: ignore[return-value]
    return "photo" if code in _PHOTO else "other"


def _group(code: str) -> str:
    return "XR" if code in ("CR", "DX") else code


def _modality(cases: list[ValidCase], declared: Modality | None,
              problems: list[Problem]) -> Modality | None:
    """One modality per dataset: the declared one, else the most common among DICOM cases."""
    seen = [(c, h.modality, modality_of(h)) for c in cases for h in c.headers[:1]]
    dicom = [(c, code, m) for c, code, m in seen if m is not None]
    if declared is not None:
        want = _group(declared)
    elif dicom:
        want = Counter(_group(code) for _, code, _ in dicom).most_common(1)[0][0]
    else:
        rgb = cases and all(c.headers[0].photometric == "RGB" for c in cases)
        return "photo" if rgb else "other"
    for case, code, _ in dicom:
        if _group(code) != want:
            problems.append(Problem("mixed_modality", f"image is {code} but the dataset is "
                                    f"{declared or want}", case.case_id, case.source))
    if declared is not None:
        return declared
    exact = Counter(m for _, code, m in dicom if _group(code) == want)
    return exact.most_common(1)[0][0]


def _split_leaks(cases: list[ValidCase], problems: list[Problem]) -> list[ValidCase]:
    splits: dict[str, set[str]] = defaultdict(set)
    for c in cases:
        if c.patient_id and c.split:
            splits[c.patient_id].add(c.split)
    leaking = {p for p, s in splits.items() if len(s) > 1}
    for c in cases:
        if c.patient_id in leaking and c.split:
            problems.append(Problem("split_leak", f"patient {c.patient_id} is in splits "
                                    f"{sorted(splits[c.patient_id])}", c.case_id, c.source))
    return [c for c in cases if c.patient_id not in leaking]


def _empty_classes(cases: Iterable[ValidCase], classes: list[str], annotation: AnnotationType,
                   problems: list[Problem]) -> None:
    """A class without examples: an error, except in multi-label data (a warning there).

    Multi-label findings can be rare (an epidural bleed is ~0.4 % of RSNA 2019 slices,
    so most batches of ~100 cases have none): the class stays, its AUC is reported as
    undefined, and the other classes train. A single-label class needs examples.
    """
    counts = Counter(label for c in cases for label in c.labels)
    for name in classes:
        if counts[name] == 0 and annotation == "multi_label":
            problems.append(Problem("empty_class", f"class {name!r} has no positive case: it "
                                    "is kept and trained as all-negative, and its AUC will be "
                                    "undefined until cases with it are added"))
        elif counts[name] == 0:
            what = {"boxes": "no box", "masks": "no mask pixel"}.get(annotation, "no case")
            problems.append(Problem("empty_class", f"class {name!r} has {what}: it cannot be "
                                    "learned (remove it from the classes or add examples)"))


def _skipped(problems: list[Problem]) -> list[SkippedCase]:
    reasons: dict[str, list[str]] = defaultdict(list)
    for p in problems:
        key = p.case_id or p.source
        if key:
            where = f"{p.source}: " if p.source else ""
            reasons[key].append(f"[{p.code}] {where}{p.message}")
    return [SkippedCase(case_id=k, reason="; ".join(v)[:2000]) for k, v in reasons.items()]
