"""The general flow: any dataset whose annotation fits the task type; the network is
auto-selected (data type + preference) or named from the zoo; tuning auto with
preferences or manual (DESIGN.md §1, §7)."""

from __future__ import annotations

from handlers.catalog.select import rank
from handlers.catalog.zoo import UnknownZooEntry, ZooEntry, get_entry
from handlers.enrich.checks import (
    annotation_errors,
    find_weights,
    label_mode_of,
    missing_weights,
    num_classes_of,
    task_type_errors,
)
from handlers.enrich.contracts import WeightsIndex, WeightsRef, err
from handlers.enrich.resolver import Draft, Resolver
from handlers.enrich.windows import choose_windows
from handlers.tuning import auto_hyperparameters, manual_hyperparameters
from handlers.tuning import check as check_hyperparameters
from imaging.windows import HEAD_CT_WINDOWS
from schemas.common import ErrorDetail
from schemas.dataset import DatasetSummary
from schemas.spec import ModelSpec, Preprocessing
from schemas.tasks import (
    AutoModel,
    DataType,
    Hyperparameters,
    ManualModel,
    ManualTuning,
    TaskRequested,
)

AUTO_CANDIDATES = 40
"""How far down the ranking auto-select looks for an entry with mirrored weights when the
weights index cannot list what it holds; one that can (``available()``, the store's
index) lets it take the best-ranked entry of the whole zoo whose weights are present, so
each goal picks its own network among the weights a site has (issue 15)."""

CT_WINDOWS = HEAD_CT_WINDOWS
"""The head-CT windows, for callers without a request; a request's windows come from its
dataset's body region or its own ``preprocessing`` (handlers/enrich/windows.py)."""


def data_type_for(choice: AutoModel, ds: DatasetSummary | None) -> DataType:
    """What the request says about its data, completed from the dataset where it is silent."""
    given = choice.data_type
    if ds is None:
        return given
    known = {"num_cases": ds.num_cases, "modality": ds.modality}
    return given.model_copy(update={k: v for k, v in known.items()
                                    if k not in given.model_fields_set})


def auto_select(choice: AutoModel, task_type: str, ds: DatasetSummary | None,
                weights: WeightsIndex) -> tuple[ZooEntry, WeightsRef | None, dict[str, str]]:
    """The best-ranked entry whose weights are mirrored (handlers/catalog/select.py).

    Falls back to the top entry (and so a ``weights_missing`` rejection naming
    it) when none of the leading candidates has weights in the store.
    """
    data = data_type_for(choice, ds)
    listing = getattr(weights, "available", None)  # an index that can list what it holds
    present: set[str] | None = listing() if callable(listing) else None
    ranked = rank(task_type, data, choice.preference,
                  limit=None if present is not None else AUTO_CANDIDATES,
                  one_per_network=False)
    if not ranked:
        raise UnknownZooEntry(f"<any {task_type} entry>")
    top5 = ", ".join(f"{r.entry.id} ({r.score:g})" for r in ranked[:5])
    reasons = {"model.ranking": f"best for {task_type}, {data.num_cases} {data.modality} "
                                f"cases at {data.image_size} px: {top5}"}
    for pos, r in enumerate(ranked, 1):
        if present is not None and r.entry.weights_id not in present:
            continue  # every entry is ranked; only those with weights are looked up
        ref = weights.find(r.entry.id)
        if ref is not None:
            skipped = [x.entry.id for x in ranked[:pos - 1]]
            reasons["model"] = (f"auto-select #{pos}: {r.entry.id}, score {r.score:g}; {r.reason}"
                                + (f"; higher-ranked {', '.join(skipped[:3])} have no mirrored "
                                   f"weights (`radtrain zoo mirror {skipped[0]}`)"
                                   if skipped else ""))
            return r.entry, ref, reasons
    reasons["model"] = f"auto-select #1: {ranked[0].entry.id}; {ranked[0].reason}"
    return ranked[0].entry, None, reasons


def resolve_model(
    cmd: TaskRequested, weights: WeightsIndex, ds: DatasetSummary | None = None
) -> tuple[ZooEntry | None, bool, WeightsRef | None, list[ErrorDetail], dict[str, str]]:
    """The network (manual from the zoo, or auto-selected) and its mirrored weights."""
    choice = cmd.model or AutoModel(mode="auto")
    task_type = cmd.task_type or "classification"
    errors: list[ErrorDetail] = []
    if isinstance(choice, ManualModel):
        try:
            entry = get_entry(choice.network)
        except UnknownZooEntry as exc:
            return None, False, None, [err("model.network", "unknown_network", str(exc))], {}
        pretrained = choice.pretrained
        ref = None
        if pretrained:
            ref, errors = find_weights(weights, entry, scratch_ok=True)
        init = f"pretrained on {entry.pretrained_on}" if pretrained else "random init"
        reasons = {"model": f"manual choice {entry.id} ({init}, {entry.params_m:g}M params, "
                            f"{entry.gmacs:g} GMACs)"}
    else:
        try:
            entry, ref, reasons = auto_select(choice, task_type, ds, weights)
        except UnknownZooEntry as exc:
            return None, False, None, [err("model", "no_candidates", str(exc))], {}
        pretrained = True
        if ref is None:
            errors = [missing_weights(entry)]
    if cmd.task_type not in entry.task_types:
        errors.insert(0, err("model.network", "task_type_mismatch",
                             f"{entry.id} supports {list(entry.task_types)}, "
                             f"not {cmd.task_type}"))
    return entry, pretrained, ref, errors, reasons


def resolve_hyperparameters(
    cmd: TaskRequested, ds: DatasetSummary, entry: ZooEntry, pretrained: bool
) -> tuple[Hyperparameters, str]:
    """The complete set (handlers/tuning.py): manual fields as given, else derived."""
    label_mode = label_mode_of(ds)
    if isinstance(cmd.tuning, ManualTuning):
        return manual_hyperparameters(cmd.tuning.hyperparameters, entry, label_mode)
    auto = cmd.model if isinstance(cmd.model, AutoModel) else None
    return auto_hyperparameters(
        entry=entry, num_cases=ds.num_cases, label_mode=label_mode, pretrained=pretrained,
        preference=auto.preference if auto else None,
        data=data_type_for(auto, ds) if auto else None)


def preprocessing_for(ds: DatasetSummary, entry: ZooEntry, image_size: int,
                      cmd: TaskRequested | None = None
                      ) -> tuple[Preprocessing, list[ErrorDetail], str]:
    """Windows by body region or from the request, and 2.5D input (handlers/enrich/windows.py)."""
    errors: list[ErrorDetail] = []
    if cmd is None:
        windows, why = (list(CT_WINDOWS) if ds.modality == "CT" else []), ""
    else:
        windows, errors, why = choose_windows(cmd, ds)
    slices = (cmd.preprocessing.slices if cmd and cmd.preprocessing else None) or "current"
    if slices == "adjacent":
        series = ds.stats.series if ds.stats is not None else 0
        why += (f"; 2.5D: previous/current/next slice in the first window ({series} series"
                + ("; single images repeat their own slice)" if not series else ")"))
    prep = Preprocessing(image_size=image_size, channels=3, windows=windows,
                         mean=entry.mean, std=entry.std, slices=slices)
    return prep, errors, why


class GeneralResolver(Resolver):
    flow = "general"

    def draft(self) -> Draft | None:
        cmd, ds = self.cmd, self.ds
        task_type = cmd.task_type or "classification"
        self.check(task_type_errors(cmd, self.rule))
        if ds is not None:
            self.check(annotation_errors(ds, self.rule, task_type))
        entry, pretrained, ref, model_errors, reasons = resolve_model(cmd, self.weights, ds)
        self.check(model_errors)
        if ds is None or entry is None:
            return None
        label_mode = label_mode_of(ds)
        hp, reasons["hyperparameters"] = resolve_hyperparameters(cmd, ds, entry, pretrained)
        self.check(check_hyperparameters(hp, entry, label_mode))
        prep, prep_errors, reasons["preprocessing"] = preprocessing_for(ds, entry, hp.image_size,
                                                                        cmd)
        self.check(prep_errors)
        return Draft(
            task_type=task_type, classes=list(ds.classes), label_mode=label_mode,
            preprocessing=prep,
            model=ModelSpec(entry_id=entry.id, builder=entry.builder, network=entry.network,
                            pretrained=pretrained, weights_key=ref.key if ref else None,
                            weights_sha256=ref.sha256 if ref else None,
                            num_classes=num_classes_of(label_mode, ds.classes), in_chans=3),
            hyperparameters=hp, reasons=reasons)
