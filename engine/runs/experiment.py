"""Experiments: a spec (dataset x models x methods + options) checked and expanded into steps, and
the function that executes one step.

Spec (YAML or JSON):

    name: my-comparison
    data: default            # or {path: letters.csv, text_column: text, label_column: label, label_sep: "|"}
                             # + text_template: "Question: {question}\nContext: {contexts}" (instead of text_column),
                             #   split_column: split or test_ids: ids.json (the split `protocol: fixed` scores)
                             #   label_columns: [a, b, c] (multi-label, one 0/1 column per label; label_column not needed)
    models: [minilm, smollm2]
    methods: [svc, logreg]
    options: {max_length: 256, epochs: 3, ...}   # engine.options lists them all (`python -m engine evaluate --help`)
    reference: true          # end the run with the tf-idf reference row (default)

`execute(spec, step)` is pure in the sense the run system needs: its inputs are plain data, its
outputs are sealed artifacts in the cache, and repeating it with the same inputs recomputes nothing.
Any executor calls it: `run` below (in this process), the background worker (engine.worker).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.cache.artifacts import StepResult
from engine.cache.context import StepContext
from engine.data import dataset as data_mod
from engine.data import labels
from engine.errors import ClinBenchError, SpecError
from engine.methods import registry
from engine.models import remote
from engine.options import specfile
from engine.options.groups import Options
from engine.protocols import plans

SPEC_KEYS = ("name", "data", "models", "methods", "options", "reference")
DATA_KEYS = ("path", "text_column", "label_column", "label_sep", *data_mod.DATA_OPTIONS)


@dataclass
class DataSpec:
    path: str = data_mod.DEFAULT_NAME
    text_column: str = data_mod.DEFAULT_COLUMNS[0]
    label_column: str = data_mod.DEFAULT_COLUMNS[1]
    label_sep: str | None = None
    text_template: str | None = None  # engine.data's data options
    split_column: str | None = None
    test_ids: str | None = None
    answer_column: str | None = None
    label_columns: list[str] | None = None  # multi-label as one 0/1 column per label (label_column is then ignored)
    subgroup_column: str | None = None  # a column whose values are scored apart (site, sex, ...), never read by a classifier
    sheet: str | None = None  # the sheet of an .xlsx workbook (default: its first)

    def load(self) -> data_mod.Dataset:
        options = {k: getattr(self, k) for k in data_mod.DATA_OPTIONS}
        return data_mod.load_dataset(self.path, self.text_column, self.label_column, label_sep=self.label_sep, **options)


@dataclass
class Spec:
    name: str
    data: DataSpec
    models: list[str]
    methods: list[str]
    options: Options = field(default_factory=Options)
    reference: bool = True  # end the run with the tf-idf reference step

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "data": asdict(self.data),
            "models": self.models,
            "methods": self.methods,
            "options": self.options.to_dict(),
            "reference": self.reference,
        }

    def steps(self, reference: bool | None = None) -> list[dict]:
        """One step per model x method, in a stable order. The model `tfidf` runs its one method (`tfidf`); with `reference`,
        a run that classifies ends with that reference step (seconds), so every comparison has its bag-of-words row.
        n_seeds > 1: one step per seed (its dict's "seed"); learning_curve: one more per size (its "labels_per_class")."""
        ref_model, ref_method = registry.REFERENCE
        reference = self.reference if reference is None else reference
        pairs = [(m, meth) for m in self.models if m != ref_model for meth in self.methods if meth != ref_method]
        classifies = any(registry.get(meth).produces == "classifier" for meth in self.methods)
        if ref_model in self.models or ref_method in self.methods or (reference and classifies):
            pairs.append((ref_model, ref_method))
        p = self.options.protocol
        if p.n_seeds == 1:
            out = [{"model": m, "method": meth, "title": f"{m} · {registry.get(meth).title}"} for m, meth in pairs]
        else:
            seeds = range(p.seed, p.seed + p.n_seeds)
            out = [
                {"model": m, "method": meth, "seed": s, "title": f"{m} · {registry.get(meth).title} · seed {s}"}
                for m, meth in pairs
                for s in seeds
            ]
        return [sized for step in out for sized in _learning_curve(step, p.learning_curve)]


def dependencies(steps_: list[dict]) -> list[list[int]]:
    """For each step of Spec.steps(), the earlier steps it waits for when steps run in parallel: those of the same model,
    seed and training size whose method it reuses (Method.after). The local worker runs steps in order, which satisfies them."""

    def same(a: dict, b: dict) -> bool:
        return all(a.get(k) == b.get(k) for k in ("model", "seed", "labels_per_class"))

    return [
        [j for j in range(i) if same(steps_[j], s) and steps_[j]["method"] in registry.get(s["method"]).after] for i, s in enumerate(steps_)
    ]


def _learning_curve(step: dict, sizes: list[int] | None) -> list[dict]:
    """`step` at each training size of the learning curve (labels_per_class, smallest first), then at its own (all letters
    unless labels_per_class is set). Only methods that train on labelled letters are repeated (not zero-shot, nor
    domain-adapt, which makes a model rather than a classifier)."""
    kind = registry.get(step["method"])
    if not sizes or "labels_per_class" not in kind.reads or kind.produces != "classifier":
        return [step]
    return [*({**step, "labels_per_class": n, "title": f"{step['title']} · {n} per label"} for n in sorted(sizes)), step]


def parse_spec(obj: Any, where: str = "spec") -> Spec:
    """Validate a spec object (already parsed from YAML/JSON); every problem is named with its key."""
    if not isinstance(obj, dict):
        raise SpecError(f"{where}: expected a mapping with keys name, data, models, methods; got {type(obj).__name__}.")
    unknown = set(obj) - set(SPEC_KEYS)
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}. Allowed: {', '.join(SPEC_KEYS)}.")
    name = obj.get("name") or "experiment"
    if not isinstance(name, str | int | float) or isinstance(name, bool):
        raise SpecError(f"{where}: name must be a short text, e.g. name: my-comparison; got a {type(name).__name__}.")
    raw = obj.get("data", "default")
    if raw == data_mod.DEFAULT_NAME or raw is None:
        ds = DataSpec()
    elif isinstance(raw, dict):
        instead = {"text_column": "text_template", "label_column": "label_columns"}  # (either one will do)
        missing = [k for k in ("path", "text_column", "label_column") if not raw.get(k) and not raw.get(instead.get(k, ""))]
        if missing:
            raise SpecError(f"{where}: data needs {', '.join(missing)} (or write data: default for the bundled dataset).")
        extra = set(raw) - set(DATA_KEYS)
        if extra:
            raise SpecError(f"{where}: unknown data key(s) {', '.join(sorted(extra))}. Allowed: {', '.join(DATA_KEYS)}.")
        options = {k: None if raw.get(k) is None else str(raw[k]) for k in data_mod.DATA_OPTIONS}
        try:
            options["label_columns"] = labels.columns_option(raw.get("label_columns"))
        except ClinBenchError as exc:
            raise SpecError(f"{where}: data: {exc}") from None
        label = str(raw.get("label_column") or data_mod.DEFAULT_COLUMNS[1])
        ds = DataSpec(str(raw["path"]), str(raw.get("text_column") or "text"), label, raw.get("label_sep"), **options)
    else:
        raise SpecError(f"{where}: data must be 'default' or a mapping with path, text_column, label_column.")
    models_ = obj.get("models")
    if not models_ or not isinstance(models_, list) or not all(isinstance(m, str) and m.strip() for m in models_):
        raise SpecError(f"{where}: models must be a non-empty list of model names, e.g. [minilm, smollm2].")
    methods_ = obj.get("methods") or ["svc"]
    if not isinstance(methods_, list):
        raise SpecError(f"{where}: methods must be a list, e.g. [svc, logreg].")
    for m in methods_:
        if m not in registry.KINDS:
            raise SpecError(f"{where}: unknown method {m!r}. Methods: {', '.join(registry.names())}.")
    options = Options.parse(obj.get("options") or {}, where)
    check_servers(models_, methods_, options, where)
    reference = obj.get("reference", True)
    if not isinstance(reference, bool):
        raise SpecError(f"{where}: reference must be true or false (end the run with the tf-idf reference step); got {reference!r}.")
    return Spec(str(name), ds, [m.strip() for m in models_], list(dict.fromkeys(methods_)), options, reference)


def check_servers(models_: list[str], methods_: list[str], options: Options, where: str) -> None:
    """Refuse, before anything runs or is sent, a server model (openai-compat:MODEL@URL) whose URL is malformed or whose
    host is neither loopback nor allowed (engine.models.remote), or that a method needing weights would use."""
    servers = [m.strip() for m in models_ if remote.is_remote(m)]
    for name in servers:
        remote.check_allowed(remote.parse(name), options.prompt.allowed_hosts)
    weights = [m for m in methods_ if not registry.get(m).remote_models]
    if servers and weights:
        can = ", ".join(k.name for k in registry.KINDS.values() if k.remote_models)
        raise SpecError(
            f"{where}: {servers[0]} is a model on a server, with no weights on this machine; {', '.join(weights)} "
            f"need{'s' if len(weights) == 1 else ''} the weights. A server model can run {can} (they need only label "
            "log-likelihoods); put the other methods in a run of local models."
        )


# Option values that specs stored by earlier versions hold and that mean something else now: (name, old value) -> value.
LEGACY_OPTION_VALUES = {("cv_repeats", 0): None}  # 0.2: "no extra CV"; now cv_repeats counts the protocol's repeats


def parse_stored_spec(obj: dict, where: str) -> Spec:
    """A spec as the run store keeps it, written by this or an earlier version (old option values translated)."""
    raw = dict(obj.get("options") or {})
    for name, value in list(raw.items()):
        if isinstance(value, int) and (name, value) in LEGACY_OPTION_VALUES:
            raw[name] = LEGACY_OPTION_VALUES[(name, value)]
    return parse_spec({**obj, "options": raw}, where)


def load_spec(path: str | Path) -> Spec:
    """A spec file (YAML or JSON, UTF-8, at most 1 MB) read (engine.options.specfile) and checked; every problem is a
    SpecError naming the file."""
    return parse_spec(specfile.read(path), where=Path(path).name)


def execute(spec: Spec, step: dict, *, dataset: data_mod.Dataset | None = None, ctx: StepContext | None = None) -> StepResult:
    """Run one step of a spec (plain data in, sealed artifacts out)."""
    kind = registry.KINDS.get(step["method"])
    if kind is None:
        raise ClinBenchError(f"Method {step['method']!r} cannot run in this version; available: {', '.join(registry.names())}.")
    # one of n_seeds, one size of the learning curve
    opts = spec.options.replace(**{k: step[k] for k in ("seed", "labels_per_class") if k in step})
    letters = plans.prepare(dataset or spec.data.load(), opts.protocol)  # (label_conflicts: drop)
    registry.require_task(step["method"], letters)
    return registry.run(letters, step["model"], step["method"], opts, ctx or StepContext())


def run(spec: Spec, *, ctx_for: Callable[[dict], StepContext | None] | None = None) -> list[StepResult | dict]:
    """Run every step in this process, one after another (for notebooks and scripts; the CLI and the
    dashboard queue runs for background workers instead). A failing step is recorded and the next one runs."""
    dataset = spec.data.load()
    results: list[StepResult | dict] = []
    for step in spec.steps():
        try:
            results.append(execute(spec, step, dataset=dataset, ctx=ctx_for(step) if ctx_for else None))
        except ClinBenchError as exc:
            results.append({**step, "error": str(exc)})
    return results
