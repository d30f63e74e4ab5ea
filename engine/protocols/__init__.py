"""Evaluation protocols: which letters a classifier is fitted on and which it is scored on.

plans  cv folds, a hold-out or the data's own split, duplicate groups, validation carve, inner splits,
       training letters per label (the learning curve)
"""
