"""The specialized flow: a preset fixes annotation, classes, preprocessing, network, weights
and recipe; the request brings the dataset and tunes auto without preferences or manually."""

from __future__ import annotations

from handlers.catalog.presets import Preset, UnknownPreset, get_preset
from handlers.catalog.zoo import get_entry
from handlers.enrich.checks import (
    class_mapping,
    find_weights,
    fit_errors,
    task_type_errors,
    tune_fixed,
)
from handlers.enrich.contracts import err
from handlers.enrich.minimums import check_minimums
from handlers.enrich.resolver import Draft, Resolver
from handlers.enrich.windows import pinned_errors
from handlers.tuning import check as check_hyperparameters
from schemas.spec import ModelSpec, Preprocessing


class SpecializedResolver(Resolver):
    flow = "specialized"

    def preset(self) -> Preset | None:
        if self.cmd.preset is None:
            return None  # preset_required, from the flows table
        try:
            return get_preset(self.cmd.preset)
        except UnknownPreset as exc:
            self.check([err("preset", "unknown_preset", str(exc))])
            return None

    def draft(self) -> Draft | None:
        cmd, ds = self.cmd, self.ds
        preset = self.preset()
        self.check(task_type_errors(cmd, self.rule, preset.task_type if preset else None))
        self.check(pinned_errors(cmd, "the preset"))
        if preset is None:
            return None
        entry = get_entry(preset.zoo_entry)  # the catalog tests pin that it exists
        classes = list(preset.classes)
        mapping: dict[str, str | None] = {}
        warnings: list[str] = []
        if ds is not None:
            mapping, unknown = class_mapping(ds, classes, preset, {})
            self.check(fit_errors(ds, what=f"preset {preset.id!r}",
                                  modalities=preset.modalities,
                                  annotations=preset.annotation_types, classes=classes,
                                  label_mode=preset.label_mode, mapping=mapping,
                                  unknown=unknown))
            fit = check_minimums(ds, preset, mapping)
            self.check(fit.errors)
            warnings = fit.warnings
        ref, missing = find_weights(self.weights, entry, needed_by=f"preset {preset.id!r}")
        self.check(missing)
        fixed = {**preset.recipe.model_dump(exclude_none=True), "image_size": preset.image_size}
        hp, why = tune_fixed(cmd, entry, preset.label_mode, ds.num_cases if ds else 1, fixed)
        self.check(check_hyperparameters(hp, entry, preset.label_mode))
        if ref is None:
            return None
        return Draft(
            task_type=preset.task_type, classes=classes, label_mode=preset.label_mode,
            preprocessing=Preprocessing(image_size=hp.image_size, channels=preset.channels,
                                        windows=list(preset.windows), mean=entry.mean,
                                        std=entry.std, slices=preset.slices),
            model=ModelSpec(entry_id=entry.id, builder=entry.builder, network=entry.network,
                            pretrained=True, weights_key=ref.key, weights_sha256=ref.sha256,
                            num_classes=len(classes), in_chans=preset.channels),
            hyperparameters=hp, preset=preset.id, preset_ref=preset.ref, class_map=mapping,
            metrics=list(preset.metrics),
            reasons={"model": f"preset {preset.ref}: {entry.id} ({entry.pretrained_on})",
                     "preprocessing": f"preset {preset.ref} (checksum "
                                      f"{preset.checksum()[:12]}): {preset.input}",
                     "hyperparameters": why,
                     **({"dataset": "warning: " + "; ".join(warnings)} if warnings else {})})
