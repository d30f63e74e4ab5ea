"""Runs: specs expanded into steps, executed in the background (locally or on Ray) and recorded in the run store.

states       Status of runs and steps (an enum), the moves a step may make, a run's status derived from its steps'
store        the run store (a package): every SQL statement, the RunStore object, workers' liveness
experiment   specs checked and expanded into steps; executing one step
launch       starting executors on demand: the local worker, the Ray driver
view         RunView / StepView: the one view of a run (CLI JSON, pages)
estimates    how long a run will take, from this machine's finished steps
jobs         submit, read, cancel, resume, delete runs
stepcall     one step called where it runs: spec and letters checked, executed, its outcome recorded
worker       worker processes executing queued steps, each in a child process
ray_task     what runs on a Ray cluster for one step: the task's body, the relay actor, its resources
ray_driver   the Ray executor: a driver that sends a run's steps to a Ray cluster as tasks
replication  stored evaluations by key: scored on another labelled file, re-run in a fresh cache and compared
housekeeping cache usage per folder, dataset, model and run; pruning that keeps what runs show
"""
