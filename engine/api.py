"""The front door: what the dashboard, the CLI and the HTTP endpoint call, and nothing else of the engine.

Datasets (validate, save, list), models (registry, availability), methods and options (what the
Runs form and the CLI flags are built from), runs (submit, list, view, cancel, resume, delete, log),
results (stored evaluations, comparison tables, significance, maps), classification (letters through
the chosen classifiers, one interface whatever trained them) and exports. Callers never reach into
training, extraction or the run store: they hand this module plain values and get engine objects or
tables back (the way LLaMA-Factory's web UI drives its engine through one runner). Errors a user can
act on are engine.errors.ClinBenchError.

Runs are read with light modules; everything that touches letters (pandas) or models (torch) imports its part of the
engine when called, so a client that only lists runs, or the CLI refusing a model it cannot have, never loads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import ClinBenchError
from engine.options.config import DEFAULT_NAME
from engine.reports import export
from engine.runs import housekeeping, jobs, replication
from engine.runs.states import Status
from engine.runs.view import RunView, StepView, fmt_duration

if TYPE_CHECKING:
    import pandas as pd

    from engine.cache.artifacts import StepResult
    from engine.cache.context import StepContext
    from engine.data.dataset import Dataset, ValidationReport
    from engine.data.datasets import SavedDataset
    from engine.evaluation.results import Evaluation, Skipped
    from engine.methods.classifiers import Classifier
    from engine.runs.experiment import Spec

__all__ = ["ClinBenchError", "RunView", "Status", "StepView", "fmt_duration"]
DEFAULT_DATASET = DEFAULT_NAME  # the bundled letters, as a spec's `data:` names them


def step_context(**callbacks) -> StepContext:
    """A step context (progress, should_stop, log_metric, logger) for work run in this process."""
    from engine.cache.context import StepContext

    return StepContext(**callbacks)


# --- the machine ------------------------------------------------------------------------


def device() -> str:
    """Where models run now, e.g. 'cpu (CPU), bfloat16'."""
    from engine.models.devices import choose

    return choose().describe()


def placement() -> dict:
    from engine.models.devices import choose

    p = choose()
    return {"device": p.device, "dtype": p.dtype}


# --- datasets ---------------------------------------------------------------------------


def store_upload(filename: str, content: bytes) -> Path:
    """Keep an uploaded file in the cache (content-addressed); refused over the size limit before it is written."""
    from engine.data import datasets

    return datasets.store_upload(filename, content)


def save_dataset(path: str | Path, name: str, text_column: str, label_column: str, label_sep: str | None = None, **options) -> SavedDataset:
    """Validate a file with its columns (and data options) and save its description."""
    from engine.data import datasets

    return datasets.save(path, name, text_column, label_column, label_sep, **options)


def saved_datasets() -> tuple[list[SavedDataset], list[tuple[str, str]]]:
    """The saved datasets, and (file, reason) of each description that could not be read."""
    from engine.data import datasets

    return datasets.list_saved()


def saved_dataset(ident: str) -> SavedDataset:
    from engine.data import datasets

    return datasets.get(ident)


def forget_dataset(ident: str) -> None:
    from engine.data import datasets

    return datasets.delete(ident)


def read_table(path: str | Path, sheet: str | None = None) -> pd.DataFrame:
    """A letters file as a table (`sheet`: the sheet of an .xlsx workbook; default its first); DataError for the file itself."""
    from engine.data import dataset

    return dataset.read_table(path, sheet)


def sheet_names(path: str | Path) -> list[str] | None:
    """The sheets of an .xlsx workbook, in order; None for a file of another kind."""
    from engine.data import tables

    return tables.sheet_names(path)


def guess_columns(table: pd.DataFrame) -> tuple[str, str]:
    from engine.data import dataset

    return dataset.guess_columns(table)


def validate_file(path: str | Path, text_column: str, label_column: str, *, label_sep: str | None = None, **options) -> ValidationReport:
    """The validation report of a letters file ('default': the bundled dataset); never raises for content problems. Data
    options (engine.data.dataset.DATA_OPTIONS: text_template, split_column, test_ids, answer_column) as keywords."""
    from engine.data import dataset

    return dataset.validate_file(
        dataset.DEFAULT_DATASET if str(path) == DEFAULT_DATASET else path, text_column, label_column, label_sep=label_sep, **options
    )


def duplicate_summary(
    path: str | Path, text_col: str, label_col: str, *, label_sep=None, near_threshold=0.8, label_columns=None, sheet=None
) -> dict:
    """engine.data.dataset.duplicates.summary of a file's usable letters (duplicate groups, label conflicts), rows as validation numbers them."""
    from engine.data import dataset, duplicates

    df, name = dataset.read_table(path, sheet), dataset.tables.shown_name(path)
    report, texts, labels = dataset.validate_table(df, text_col, label_col, path=name, label_sep=label_sep, label_columns=label_columns)
    return duplicates.summary(texts, labels, near_threshold=near_threshold, row_numbers=report.usable_rows)


def load_dataset(path: str | Path, text_column: str, label_column: str, *, label_sep: str | None = None, **options) -> Dataset:
    """Letters and labels of a file ('default': the bundled dataset); DataError lists every blocking problem. Data options
    (engine.data.dataset.DATA_OPTIONS) as keywords."""
    from engine.data import dataset

    return dataset.load_dataset(path, text_column, label_column, label_sep=label_sep, **options)


def default_dataset() -> Dataset:
    from engine.data import dataset

    return dataset.default_dataset()


def prompt_preview(ds: Dataset, flat: dict | None = None, row: int = 0) -> str:
    """The prompt letter `row` of `ds` gets from zero-shot/few-shot/instruct-lora with these (flat) options, and the answers scored."""
    from engine.methods import prompting
    from engine.options import groups

    p = groups.Options.parse(flat or {}, where="the form").prompt
    template, letters = prompting.with_columns(p.prompt_template, ds.letter_fields, ds.texts)
    return prompting.preview(template, ds.classes, p.verbalizers, letters[row])


def protocol_preview(ds: Dataset, options: dict | None = None, method: str = "svc") -> dict:
    """The protocol a run with these (flat) options would use on `ds`, why, each class's test letters per fold, and warnings."""
    from engine.options.groups import Options
    from engine.protocols.plans import preview

    return preview(ds, Options.parse(options or {}, where="options").protocol, method)


# --- models -----------------------------------------------------------------------------


def model_rows() -> list[dict]:
    """Every registry entry (bundled, presets, adapted): name, source, kind, parameters, offline availability and why."""
    from engine.models import catalog

    return [catalog.describe(e) for e in catalog.registry()]


def bundled_models() -> list[str]:
    """The models that ship with ClinBench (offline)."""
    from engine.models import catalog

    return list(catalog.BUNDLED)


def model_names() -> list[str]:
    from engine.models import catalog

    return [e.name for e in catalog.registry()]


def describe_model(name: str) -> dict:
    """A registry name, hub id or local folder described like `model_rows`; ClinBenchError for a name that cannot be a model."""
    from engine.models import catalog

    return catalog.describe_name(name)


def check_server(url: str, model: str = "", allowed_hosts: list[str] | None = None) -> dict:
    """An OpenAI-compatible server tested (engine.models.remote.probe): the model id to use (`name`,
    openai-compat:MODEL@URL), the models it serves, and whether it gives exact label likelihoods or the first token's only
    (`mode`, `scoring`). Letters are never sent here; a host not allowed is refused before anything is sent."""
    from engine.models import remote

    return remote.probe(url, model, allowed_hosts)


# --- methods and options ----------------------------------------------------------------


def methods() -> list[dict]:
    """Every method, in display order: name, title, stage, what it produces, the options it reads, whether it takes
    multi-label data, whether it can use a model on a server."""
    from engine.methods import registry

    return [
        {
            "name": k.name,
            "title": k.title,
            "stage": k.stage,
            "produces": k.produces,
            "reads": list(k.reads),
            "label_sets": k.label_sets,
            "remote_models": k.remote_models,
        }
        for k in registry.KINDS.values()
    ]


def method_title(name: str) -> str:
    from engine.methods import registry

    return registry.get(name).title if name in registry.KINDS else name


def option_groups() -> list[dict]:
    """The options by concern, for forms: group key, title, description, its fields (engine.options.groups.FieldSpec) and the
    methods that read any of them."""
    from engine.methods import registry
    from engine.options import groups

    out = []
    for group in groups.GROUPS:
        fields = groups.fields(group)
        used_by = [k.name for k in registry.KINDS.values() if any(f.name in k.reads for f in fields)]
        out.append(
            {"group": group, "title": groups.group_title(group), "doc": groups.group_doc(group), "fields": fields, "used_by": used_by}
        )
    return out


def default_comparison() -> dict:
    """The spec of the home page's button: the bundled models x the frozen-embedding methods on the default letters."""
    from engine.methods import registry

    return {"name": "default comparison", "data": DEFAULT_DATASET, "models": bundled_models(), "methods": list(registry.FROZEN_EMBEDDING)}


# --- runs -------------------------------------------------------------------------------

list_runs = jobs.list_runs  # newest first, as RunView
get_run = jobs.get_run  # one RunView with its curves
cancel_run, resume_run, delete_run = jobs.cancel, jobs.resume, jobs.delete
run_log, workers = jobs.read_log, jobs.workers
# the cache's bytes per folder/dataset/model/run (`cache usage`), pruning (`cache prune`), sizes in words
cache_usage, prune_cache, human_size = housekeeping.usage, housekeeping.prune, housekeeping.human
ensure_worker = jobs.ensure_worker  # start what queued steps wait for: a list of launch.Started
wake_workers = jobs.wake_workers  # the same, for whatever lists runs: a line for each executor started (none: [])


def read_spec(path: str | Path) -> Any:
    """The object a spec file holds, read but not checked (light: the CLI takes its model names from it first)."""
    from engine.options import specfile

    return specfile.read(path)


def check_hub_models(names: list[str]) -> None:
    """Refuse (ModelUnavailable) each of `names` that is a hub id neither in the local cache nor on a reachable hub, without
    loading torch or the methods; other names are left to the spec's full check."""
    from engine.errors import ModelUnavailable
    from engine.models import catalog

    for name in names:
        try:
            entry = catalog.resolve(name)
        except ModelUnavailable:
            continue  # (tfidf, or a name the full check explains in its context)
        if entry.source in ("hub", "preset"):
            catalog.check_available(name)


def parse_spec(obj: Any, where: str = "spec") -> Spec:
    from engine.runs import experiment

    return experiment.parse_spec(obj, where=where)


def load_spec(path: str | Path) -> Spec:
    from engine.runs import experiment

    return experiment.load_spec(path)


def submit(spec: Spec | dict, *, where: str = "spec", start_worker: bool = True) -> int:
    """Check a spec (a Spec, or a mapping as in a spec file) and queue it as a background run; returns the run id."""
    from engine.runs import experiment, jobs

    if not isinstance(spec, experiment.Spec):
        spec = experiment.parse_spec(spec, where=where)
    return jobs.submit(spec, start_worker=start_worker)


def estimate(spec: Spec | dict, *, where: str = "spec") -> list:
    """How long each step of `spec` would take on this machine (engine.runs.estimates.StepEstimate), from its finished steps."""
    from engine.runs import estimates

    return estimates.estimate(spec if not isinstance(spec, dict) else parse_spec(spec, where))


def run_in_process(spec: Spec, step: dict, dataset: Dataset | None = None, ctx: StepContext | None = None) -> StepResult:
    """Execute one step of a spec here and now (the CLI's `evaluate`); the artifact is cached like a background run's."""
    from engine.runs import experiment

    return experiment.execute(spec, step, dataset=dataset, ctx=ctx)


def embed(
    model: str, texts: list[str], *, pooling: str, max_length: int, windows: int = 1, use_cache: bool = True, ctx: StepContext | None = None
):
    """(vectors, stats) of letters with one model, from the embeddings cache when possible (`windows`: see EmbeddingOptions)."""
    from engine.features import extract

    return extract.embed(model, texts, pooling=pooling, max_length=max_length, windows=windows, use_cache=use_cache, ctx=ctx)


# --- results ----------------------------------------------------------------------------


def evaluations(data_hash: str | None = None, run_id: int | None = None) -> tuple[list[Evaluation], list[Skipped]]:
    """Stored evaluations (newest first), of one dataset and/or one run; damaged ones are skipped with a reason."""
    from engine.evaluation import results
    from engine.runs import jobs

    keys = jobs.get_run(run_id).artifacts if run_id is not None else None
    return results.list_evaluations(data_hash=data_hash, keys=keys)


find_evaluations = replication.find_evaluations  # by key, key prefix (6+ characters) or artifact folder; else ClinBenchError
score_external = replication.score_external  # external validation: a stored classifier's metrics (with CI) on another file
rerun = replication.rerun  # a stored evaluation run again in a fresh cache: {identical, macro_f1, differences, environment, ...}


def result_datasets(evals: list[Evaluation]) -> list[dict]:
    from engine.evaluation import results

    return results.datasets(evals)


def comparison_table(evals: list[Evaluation]) -> pd.DataFrame:
    from engine.evaluation import results

    return results.comparison_table(evals)


def seed_spread(evals: list[Evaluation], metric: str | None = None) -> pd.DataFrame:
    from engine.evaluation import comparison

    return comparison.seed_spread(evals, metric)


def per_class_table(evals: list[Evaluation]) -> pd.DataFrame:
    from engine.evaluation import results

    return results.per_class_table(evals)


def significance(evals: list[Evaluation], metric: str | None = None) -> pd.DataFrame:
    from engine.evaluation import comparison

    return comparison.significance(evals, metric=metric)


def misclassified(ev: Evaluation) -> pd.DataFrame:
    from engine.evaluation import results

    return results.misclassified(ev)


def disagreements(evals: list[Evaluation]) -> pd.DataFrame:
    from engine.evaluation import results

    return results.disagreements(evals)


def headline(task: str | None, chosen: str | None = None) -> str:
    """The headline score's key for a task (engine.evaluation.headline): macro_f1; micro_f1 for several labels per letter;
    `chosen` when the reader picked another."""
    from engine.evaluation import headline as headline_

    return headline_.metric(task, chosen)


def scored_letters(ev: Evaluation) -> dict[int, dict]:
    """Each letter `ev` scored, once (repeat 0 under cv): {dataset position: {truth, prediction, wrong}}; `wrong` is the
    definition the misclassified letters use too."""
    from engine.evaluation import results

    return results.scored_letters(ev)


def predictions(ev: Evaluation) -> dict:
    from engine.evaluation import results

    return results.predictions(ev)


def letters(ev: Evaluation) -> Dataset:
    from engine.evaluation import results

    return results.letters(ev)


def umap_map(embeddings_key: str):
    """(n_letters, 2) UMAP coordinates of stored embeddings (cached)."""
    from engine.features import projection

    return projection.project(embeddings_key)


def start_umap_warm_up() -> dict:
    from engine.features import projection

    return projection.start_warm_up(wait_while=jobs.busy)  # a queued or running step goes first


# --- classification and export ----------------------------------------------------------


def load_classifier(artifact: str | Path) -> Classifier:
    """The classifier of a stored evaluation: `classes_`, `predict_proba(texts)`, `predict(texts)`, `metadata`."""
    from engine.methods import classifiers

    return classifiers.load(artifact)


def pickled(evals: list[Evaluation]) -> list[Evaluation]:
    """Those of `evals` whose classifier ClinBench 0.2 or earlier stored as a pickle: they answer only after convert_pickles."""
    from engine.cache.estimator_files import is_pickled

    return [e for e in evals if is_pickled(e.folder)]


def convert_pickles(evals: list[Evaluation]) -> list[str]:
    """Rewrite the pickled classifiers among `evals` in the format that cannot run code, and reseal them; the keys converted.
    Only on the user's confirmation that the cache is theirs: a pickle runs any code it names when it is loaded."""
    from engine.cache.estimator_files import convert_pickle

    return [e.key for e in evals if convert_pickle(e.folder)]


def check_letter(text: str) -> str:
    """The letter stripped, or LetterError: not valid Unicode, empty, or no words once control and invisible characters go."""
    from engine.serving import predict

    return predict.check_letter(text)


def classify(text: str, evals: list[Evaluation]) -> list[dict]:
    """One letter through each evaluation's classifier: label, probability, every class's probability, latency."""
    from engine.serving import predict

    return predict.classify(text, evals)


def nearest(text: str, ev: Evaluation, k: int = 5) -> list[dict]:
    """The k training letters of a frozen-embedding evaluation closest to `text` (cosine): row, label, similarity, first words."""
    from engine.serving import predict

    return predict.nearest(text, ev, k)


def agreement(rows: list[dict]) -> dict:
    from engine.serving import predict

    return predict.agreement(rows)


def write_json(path: str | Path, obj: Any) -> None:
    from engine.cache.storage import atomic_write_json

    atomic_write_json(Path(path), obj)


def save_npy(path: str | Path, array) -> None:
    """Save an array as .npy, atomically."""
    import numpy as np

    from engine.cache.storage import atomic_path

    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.asarray(array))


# Exports (engine.export imports only the standard library until a chart is rendered): the Chrome/Chromium that
# PNG/SVG need (or None), a plotly figure as png/svg/html (ExportError when it cannot be rendered), a table as CSV,
# the report zip, file-name slugs.
browser_path, figure_bytes, table_csv = export.browser_path, export.figure_bytes, export.table_csv
report_zip, slug = export.report_zip, export.slug


def methods_markdown(evals: list[Evaluation], with_significance: bool = True) -> str:
    """methods.md of a comparison (engine.reports.methods): data, protocol, models and methods, metrics and tests,
    versions, the table with CIs, subgroups, the paired tests' verdicts and the TRIPOD+AI items covered."""
    from engine.evaluation import comparison
    from engine.reports import methods

    sig = comparison.significance(evals) if with_significance and len(evals) > 1 else None
    return methods.methods_markdown(evals, sig)


def subgroup_table(evals: list[Evaluation]) -> pd.DataFrame:
    """One row per evaluation and subgroup (those scored with a subgroup column; engine.evaluation.subgroups)."""
    from engine.evaluation import results

    return results.subgroup_table(evals)


def export_formats() -> dict[str, str]:
    """Chart formats and their MIME types."""
    return dict(export.FORMATS)
