"""ClinBench engine: from labelled clinical letters to comparable classifier scores.

A plain Python package (it never imports streamlit). The dashboard, the CLI (`python -m engine
--help`) and the HTTP endpoint call one module, `engine.api` (the front door), and catch
`engine.errors.ClinBenchError`.

Layers, in order: each module imports only modules listed before it (function-level and
TYPE_CHECKING imports included; tests/test_layering.py parses every import and checks it), so
the import graph has no cycle.

    errors            ClinBenchError and its kinds, the messages a user sees
    config            where things live (cache folder, bundled resources), package versions
    optionfields      how one option is declared and checked: option(), FieldSpec, coerce
    options           typed run options, one dataclass per concern: spec check, form, manifest
    optionflags       the command-line flags derived from the options
    states            Status of runs and steps (an enum), a run's status derived from its steps'
    context           StepKind (what a method is) and StepContext (progress, stop, metrics, logger)
    terminal          the command line's progress bars (one per stage of a step)
    storage           cache layout, content hashes, atomic writes
    duplicates        exact and near-duplicate letters: groups that never straddle a split, label conflicts
    devices           CUDA or CPU, dtype, free memory
    tables            reading a letters file: encodings, ragged rows, JSONL; guessing the text and label columns
    labels            reading label cells (one label, several, one 0/1 column per label); the multi-label summary
    data              loading CSV/JSONL, the validation report
    metrics           scores of predictions: per class, macro-F1 CI, baseline, paired test; multi-label scores
    paired            is A's score different from B's on the same letters: paired bootstrap, corrected t-test, McNemar, Holm
    binary            two-label tasks: the positive label, the operating threshold, sensitivity/specificity/AUCs with CIs
    protocols         which letters fit and which score: cv folds, a hold-out or the data's own split, duplicate groups,
                      validation carve, training letters per label (the learning curve)
    artifacts         sealed artifact folders: manifests, hash checks, cache lookup, predictions.json
    evaluation        out-of-fold predictions under a plan -> the figures every method reports
    hub               the Hugging Face hub: local cache first, bounded time, clear offline errors
    models            registry (bundled, presets, hub ids, local folders, adapted), loading
    windows           long letters read in overlapping windows of max_length tokens, their vectors pooled into one
    features          embedding extraction (pooling, batching, streaming to disk, cache)
    estimators        scikit-learn pipelines on embeddings (SMOTE, search, calibrated SVC, logreg)
    frozen            the svc and logreg steps (frozen embeddings -> estimator)
    reference         the tfidf step: tf-idf + logistic regression, the reference row of every comparison
    dropout           cheap dropout masks for CPU training
    finetune.loop     the training loop, checkpoints, live curves, a training's cache key
    finetune.loading  models and adapters for training and for reuse
    finetune.head     the lora step (and the helpers the linear probe shares)
    finetune.probe    the linear-probe step: a linear head trained on the cached embeddings
    finetune.tuned_svc  the lora-svc step
    finetune.generation  written answers of a causal LM: batched greedy generation, ROUGE-L and BLEU
    finetune.domain   the domain-adapt step
    finetune.adapted_svc  the adapt-svc step: domain adaptation per fold, then the SVC on the adapted vectors
    finetune.setfit   the setfit step: contrastive tuning of a sentence encoder on pairs, then a logistic head
    prompting         a causal LM as a classifier: prompt template, label words, log-likelihood scoring, calibration
    incontext         the zero-shot and few-shot steps (examples from the training letters) and their stored classifier
    finetune.instruct  the instruct-lora step: LoRA on prompt -> label words (loss on the answer), then label likelihood
    steps             the registry of step kinds (methods)
    classifiers       one interface for every trained classifier: classes_, predict_proba(texts)
    experiment        specs checked and expanded into steps; executing one step
    store             the SQLite run store, workers' liveness
    launch            starting executors on demand: the local worker, the Ray driver
    runview           RunView / StepView: the one view of a run (CLI JSON, pages)
    estimates         how long a run will take, from this machine's finished steps
    jobs              submit, read, cancel, resume, delete runs
    stepcall          one step called where it runs: spec and letters checked, executed, its outcome recorded
    worker            worker processes executing queued steps, each in a child process
    raytask           what runs on a Ray cluster for one step: the task's body, the relay actor, its resources
    rayexec           the Ray executor: a driver that sends a run's steps to a Ray cluster as tasks
    datasets          uploaded datasets saved in the cache
    results           stored evaluations, comparison tables, the letters behind the figures
    comparison        is one model better than another: paired tests with a verdict, spread across seeds
    projection        UMAP maps of stored embeddings, cached
    predict           letters through several classifiers, with agreement and latency
    replication       stored evaluations by key: scored on another labelled file, re-run in a fresh cache and compared
    export            charts as PNG/SVG/HTML, tables as CSV, a report zip
    housekeeping      cache usage per folder, dataset, model and run; pruning that keeps what runs show
    api               the front door
    serve             `python -m engine serve`: the stored classifiers over HTTP (FastAPI), loopback or with a token
    cli_commands      the bodies of the CLI's commands
    cli               `python -m engine ...`: the parser
    __main__
"""

__version__ = "0.2.0"

LAYERS = (
    "errors",
    "config",
    "optionfields",
    "options",
    "optionflags",
    "states",
    "context",
    "terminal",
    "storage",
    "duplicates",
    "devices",
    "tables",
    "labels",
    "data",
    "metrics",
    "paired",
    "binary",
    "protocols",
    "artifacts",
    "evaluation",
    "hub",
    "models",
    "windows",
    "features",
    "estimators",
    "frozen",
    "reference",
    "dropout",
    "finetune.loop",
    "finetune.loading",
    "finetune.head",
    "finetune.probe",
    "finetune.tuned_svc",
    "finetune.generation",
    "finetune.domain",
    "finetune.adapted_svc",
    "finetune.setfit",
    "prompting",
    "incontext",
    "finetune.instruct",
    "steps",
    "classifiers",
    "experiment",
    "store",
    "launch",
    "runview",
    "estimates",
    "jobs",
    "stepcall",
    "worker",
    "raytask",
    "rayexec",
    "datasets",
    "results",
    "comparison",
    "projection",
    "predict",
    "replication",
    "export",
    "housekeeping",
    "api",
    "serve",
    "cli_commands",
    "cli",
    "__main__",
)
