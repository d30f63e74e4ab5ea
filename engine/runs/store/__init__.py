"""The run store: SQLite in the cache folder, the one place where ClinBench reads and writes runs (no SQL elsewhere).

database   the store's files: runs.sqlite (schema and migration, connections, transactions, integrity), run ids, logs
runstore   RunStore: every statement on runs, steps, curves and workers; `move`, the one place a step changes state
liveness   whether a worker's process is alive, and how many workers may run at once
"""
