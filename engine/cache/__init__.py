"""The cache: content-addressed folders, sealed artifacts, and the context a step reports through.

    storage    cache layout, content hashes, atomic writes
    artifacts  sealed artifact folders: manifests, hash checks, cache lookup, predictions.json
    estimator_files  stored estimators in a format that cannot run code (skops); pickles of ClinBench <= 0.2 converted on request
    context    StepContext: progress, cancellation, metrics and a logger for one step
"""
