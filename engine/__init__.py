"""ClinBench engine: from labelled clinical letters to comparable classifier scores.

A plain Python package (it never imports streamlit). The dashboard, the CLI (`python -m engine
--help`) and the HTTP endpoint call one module, `engine.api` (the front door), and catch
`engine.errors.ClinBenchError`.

The engine is cut into layers, one package each (the modules `errors` and `api` are layers of their own). A module
imports only modules of its own package or of a layer listed before it (function-level and TYPE_CHECKING imports
included); tests/test_layering.py parses every import and checks it, and that the module graph has no cycle. Each
package's __init__ lists its modules and the one concept each owns.

    errors      ClinBenchError and its kinds, the messages a user sees
    options     the typed run options (spec check, form, CLI flags, manifest) and where things live
    cache       content-addressed folders, sealed artifacts, the context a step reports through
    data        letters: reading a file, labels, duplicates, saved datasets
    models      which models exist, where their files are, the device they run on
    features    letter vectors: extraction, long letters in windows, UMAP maps
    protocols   which letters fit and which score: folds, hold-out, the data's own split, inner splits
    evaluation  predictions turned into figures; figures compared (metrics, paired tests, stored results)
    reports     charts and tables exported for a reader
    finetune    the training loop every fine-tuning method shares; models loaded for training and reuse
    methods     one module per method on one harness; the registry; the stored-classifier interface
    serving     stored classifiers answering new letters: in process and over HTTP
    runs        specs into steps, the run store, the background worker and the Ray driver, housekeeping
    api         the front door
    cli         `python -m engine ...`
"""

__version__ = "0.2.0"

LAYERS = (
    "errors",
    "options",
    "cache",
    "data",
    "models",
    "features",
    "protocols",
    "evaluation",
    "reports",
    "finetune",
    "methods",
    "serving",
    "runs",
    "api",
    "cli",
    "__main__",
)
