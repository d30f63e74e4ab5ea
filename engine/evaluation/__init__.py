"""Evaluation: predictions on test letters turned into figures, and figures compared.

metrics     scores of predictions: per class, macro-F1 CI (a stratified cluster bootstrap over duplicate groups), baseline; multi-label scores
calibration do the probabilities mean what they say: Brier, ECE and its bins, calibration intercept and slope, with CIs
paired      is A's score different from B's on the same letters: paired bootstrap, corrected t-test, McNemar, Holm
binary      two-label tasks: the positive label, the operating threshold, sensitivity/specificity/AUCs with CIs
headline    the headline score of a task (macro-F1; micro-F1 for label sets), one for every page, report and log
scoring     out-of-fold predictions under a plan -> the figures every method reports
subgroups   the headline metric per value of a subgroup column (site, sex, ...), and the best-worst gap, with CIs
overlap     which letters a stored classifier read, and whether a file to score shares any of them
results     stored evaluations, comparison tables, the letters behind the figures
comparison  is one model better than another: paired tests with a verdict, spread across seeds
"""
