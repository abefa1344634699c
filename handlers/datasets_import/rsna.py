"""The RSNA intracranial hemorrhage layout: ``ID,Label`` rows, images ``ID_<image>.dcm``.

Each image has one row per subtype, ``ID_<image>_<subtype>,<0|1>``; the
``any`` row must agree with the others. The published training CSV repeats
some rows; a repeat with the same value is harmless, a contradicting one is a
problem. Classes default to the preset's five subtypes, in its order.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from handlers.datasets_import.base import (
    Candidate,
    ImportAbort,
    ImportOptions,
    Parsed,
    Problem,
    case_id_from,
    column,
    index_files,
    labels_file,
    looks_like_image,
    read_csv,
    rel,
)

SUBTYPES = ("subarachnoid", "subdural", "epidural", "intraparenchymal", "intraventricular")
ANY = "any"
_VALUES = {"0": False, "1": True, "0.0": False, "1.0": True}


def parse(root: Path, opts: ImportOptions) -> Parsed:
    if opts.annotation_type not in (None, "multi_label"):
        raise ImportAbort(Problem("invalid_option", "the RSNA layout is multi_label"))
    classes = list(opts.classes) if opts.classes else list(SUBTYPES)
    bad = sorted(set(classes) - {*SUBTYPES, ANY})
    if bad:
        raise ImportAbort(Problem("unknown_label", f"classes {bad} are not RSNA subtypes "
                                  f"({', '.join((*SUBTYPES, ANY))})"))
    path = labels_file(root, opts, (".csv",), prefer="train")
    header, rows = read_csv(path)
    id_col, label_col = column(header, "id"), column(header, "label")
    if id_col is None or label_col is None:
        raise ImportAbort(Problem("invalid_labels_file", f"{path.name}: expected columns ID,Label"))
    values, first_line, problems = _collect(rows, path.name, id_col, label_col)
    files = index_files(root)
    candidates: list[Candidate] = []
    listed: set[Path] = set()
    for image, subtypes in values.items():
        src = f"{path.name}:{first_line[image]}"
        cand = _candidate(image, subtypes, classes, files, src, problems)
        if cand is not None:
            candidates.append(cand)
            listed.update(cand.images)
    for image_paths in files.values():
        for p in image_paths:
            if p.suffix.lower() == ".dcm" and p not in listed \
                    and p.stem not in values and looks_like_image(p):
                problems.append(Problem("missing_label", "image has no rows in the labels file",
                                        case_id_from(p.stem) or None, rel(root, p)))
    return Parsed("multi_label", classes, candidates, problems)


def _collect(rows: Iterable[tuple[int, list[str]]], name: str, id_col: int, label_col: int,
             ) -> tuple[dict[str, dict[str, bool]], dict[str, int], list[Problem]]:
    """Group ``ID_<image>_<subtype>`` rows by image; report malformed and conflicting rows."""
    values: dict[str, dict[str, bool]] = {}
    first_line: dict[str, int] = {}
    problems: list[Problem] = []
    for line, cells in rows:
        src = f"{name}:{line}"
        if len(cells) <= max(id_col, label_col):
            problems.append(Problem("invalid_row", "row is missing cells", source=src))
            continue
        image, _, subtype = cells[id_col].rpartition("_")
        if not image.startswith("ID_") or not subtype:
            problems.append(Problem("invalid_row", f"{cells[id_col]!r} is not "
                                    "ID_<image>_<subtype>", source=src))
            continue
        case = case_id_from(image)
        value = _VALUES.get(cells[label_col])
        if subtype not in SUBTYPES and subtype != ANY:
            problems.append(Problem("unknown_label", f"unknown subtype {subtype!r}", case, src))
            continue
        if value is None:
            problems.append(Problem("missing_label", f"{subtype}: label {cells[label_col]!r} is "
                                    "not 0 or 1", case, src))
            continue
        seen = values.setdefault(image, {})
        first_line.setdefault(image, line)
        if subtype in seen and seen[subtype] != value:
            problems.append(Problem("conflicting_label", f"{subtype} is given as both 0 and 1",
                                    case, src))
        seen[subtype] = value
    return values, first_line, problems


def _candidate(image: str, subtypes: dict[str, bool], classes: list[str],
               files: dict[str, list[Path]], src: str, problems: list[Problem]
               ) -> Candidate | None:
    case = case_id_from(image)
    missing = [s for s in (*SUBTYPES, *([ANY] if ANY in classes else [])) if s not in subtypes]
    if missing:
        problems.append(Problem("missing_label", f"no row for {', '.join(missing)}", case, src))
        return None
    if ANY in subtypes and subtypes[ANY] != any(subtypes[s] for s in SUBTYPES):
        problems.append(Problem("conflicting_label", f"'any' is {int(subtypes[ANY])} but the "
                                "subtypes say otherwise", case, src))
        return None
    hits = files.get(f"{image}.dcm", [])
    if len(hits) != 1:
        what = "not found" if not hits else f"found {len(hits)} times"
        problems.append(Problem("missing_image", f"{image}.dcm {what} in the source", case, src))
        return None
    labels = [c for c in classes if subtypes.get(c, False)]
    return Candidate(case_id=case, images=hits, source=src, labels=labels)
