"""ClinBench engine: from labelled clinical letters to comparable classifier scores.

A plain Python package (it never imports streamlit); the dashboard and the CLI
(`python -m engine --help`) are thin layers over it.

Layers, each importing only from the ones above it:

    errors     ClinBenchError and its kinds, the messages a user sees
    config     where things live (cache folder, bundled resources), package versions
    storage    cache layout, content hashes, atomic writes, manifests, checked artifacts
    devices    CUDA or CPU, dtype, autocast, free memory
    data       loading CSV/JSONL, validation report, stratified split
    models     registry (bundled, presets, hub ids, local folders), memory estimate, loading
    features   embedding extraction (pooling, batching, streaming to disk, cache)
    methods    classifiers on embeddings (scaler -> SMOTE -> SVC / logistic regression)
    evaluation metrics, bootstrap confidence intervals, repeated cross-validation
    experiment specs (YAML/JSON) expanded into steps, the step table, the embedding -> classifier step
    dropout    cheap dropout masks for CPU training (used by finetune's training loop)
    finetune   linear probe, LoRA, LoRA-tuned embeddings -> SVC, domain adaptation (experiment's step
               table reaches it lazily; it builds on experiment's helpers)
    datasets   uploaded datasets saved in the cache (file + chosen columns)
    results    stored evaluations as the dashboard reads them, comparison tables, significance
    projection UMAP maps of stored embeddings, cached
    predict    one letter through every stored classifier, with latency
    export     charts as PNG/SVG/HTML, tables as CSV, a report zip
    jobs       the run store (SQLite, WAL): submit, read, cancel, resume runs; worker liveness
    worker     worker processes executing queued steps, each in a child process
    cli        `python -m engine ...`
"""

__version__ = "0.1.0"
