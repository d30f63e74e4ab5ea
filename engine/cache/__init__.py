"""The cache: content-addressed folders, sealed artifacts, and the context a step reports through.

    storage    cache layout, content hashes, atomic writes
    artifacts  sealed artifact folders: manifests, hash checks, cache lookup, predictions.json
    context    StepContext: progress, cancellation, metrics and a logger for one step
"""
