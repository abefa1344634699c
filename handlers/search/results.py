"""A finished search's own files: metrics.json (the trials table) and two plots.

Pure bytes (written by the handler under ``runs/<parent>/search/``): the plots are
drawn with Pillow, a base dependency, because the handlers do not install the
runner's matplotlib. ``search_objective.png``: each trial's objective by trial
number (complete, pruned at its last reported value, failed/stopped on the axis),
with the best so far as a line; ``search_importance.png``: PED-ANOVA importances
(handlers/search/study.py), or a note saying why there are none (fewer than two complete trials).
"""

from __future__ import annotations

import io
import json

from PIL import Image, ImageDraw, ImageFont

from schemas.search_state import SearchState, best_trial, trial_rows

W, H, M = 640, 400, 56
Font = ImageFont.ImageFont | ImageFont.FreeTypeFont
COLOURS = {"complete": (31, 119, 180), "pruned": (255, 127, 14), "failed": (214, 39, 40),
           "stopped": (127, 127, 127), "running": (127, 127, 127)}


def metrics_json(state: SearchState, importances: dict[str, float]) -> bytes:
    plan = state.spec.search
    assert plan is not None
    best = best_trial(state.trials, plan.direction)
    doc = {
        "search": {"objective": plan.objective, "direction": plan.direction,
                   "budget": plan.budget.model_dump(), "seed": plan.seed,
                   "pruner": plan.pruner, "space": {k: v.model_dump() for k, v in
                                                    plan.space.items()},
                   "baseline": plan.baseline, "stop_reason": state.stop_reason},
        "best_trial": best.number if best else None,
        "best_task_id": best.task_id if best else None,
        "metrics": best.metrics if best else {},
        "trials": [r.model_dump() for r in trial_rows(state)],
        "importances": importances,
    }
    return json.dumps(doc, indent=2, sort_keys=True).encode()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _canvas(title: str) -> tuple[Image.Image, ImageDraw.ImageDraw, Font]:
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    draw.text((M, 16), title, fill="black", font=font)
    return img, draw, font


def objective_plot(state: SearchState) -> bytes:
    plan = state.spec.search
    assert plan is not None
    img, draw, font = _canvas(f"{plan.objective} by trial ({plan.direction}); "
                              "blue complete, orange pruned, red failed")
    points = [(t.number, t.value, t.state) for t in state.trials]
    values = [v for _, v, _ in points if v is not None]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    n = max(1, len(points) - 1)

    def xy(number: int, value: float) -> tuple[float, float]:
        return (M + (W - 2 * M) * number / n, H - M - (H - 2 * M) * (value - low) / (high - low))

    draw.rectangle([M, M, W - M, H - M], outline="black")
    for frac in (0.0, 0.5, 1.0):
        v = low + frac * (high - low)
        draw.text((4, xy(0, v)[1] - 6), f"{v:.3g}", fill="black", font=font)
    best_line, best = [], None
    sign = 1.0 if plan.direction == "maximize" else -1.0
    for number, value, st in points:
        draw.text((xy(number, low)[0] - 3, H - M + 6), str(number), fill="black", font=font)
        if value is None:
            x, y = xy(number, low)
            draw.line([x - 4, y - 4, x + 4, y + 4], fill=COLOURS[st], width=2)
            draw.line([x - 4, y + 4, x + 4, y - 4], fill=COLOURS[st], width=2)
            continue
        x, y = xy(number, value)
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=COLOURS[st])
        if st == "complete" and (best is None or sign * value > sign * best):
            best = value
        if best is not None:
            best_line.append(xy(number, best))
    if len(best_line) > 1:
        draw.line(best_line, fill=(44, 160, 44), width=2)
    return _png(img)


def importance_plot(importances: dict[str, float]) -> bytes:
    img, draw, font = _canvas("parameter importances (Optuna PED-ANOVA)")
    if not importances:
        draw.text((M, H // 2), "not enough complete trials with different values",
                  fill="black", font=font)
        return _png(img)
    rows = sorted(importances.items(), key=lambda kv: (-kv[1], kv[0]))
    bar_h = min(32, (H - 2 * M) // len(rows))
    left, width = M + 120, W - 2 * M - 120
    for i, (name, value) in enumerate(rows):
        y = M + i * bar_h
        draw.text((M, y + bar_h // 3), name[:20], fill="black", font=font)
        draw.rectangle([left, y + 4, left + width * max(0.0, min(1.0, value)), y + bar_h - 4],
                       fill=COLOURS["complete"])
        draw.text((left + 4, y + bar_h // 3), f"{value:.2f}", fill="white", font=font)
    return _png(img)


def result_files(state: SearchState, importances: dict[str, float]) -> dict[str, bytes]:
    """Artifact name -> bytes, written under ``runs/<parent>/search/``."""
    return {"metrics.json": metrics_json(state, importances),
            "search_objective.png": objective_plot(state),
            "search_importance.png": importance_plot(importances)}
