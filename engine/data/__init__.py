"""Letters: reading a labelled file, its labels, its duplicates, and the datasets a user saved.

tables      reading a letters file: encodings, ragged rows, JSONL; guessing the text and label columns
labels      reading label cells (one label, several, one 0/1 column per label); the label matrix
duplicates  exact and near-duplicate letters: groups that never straddle a split, label conflicts
dataset     Dataset: loading CSV/JSONL, the validation report, the bundled default letters
datasets    uploaded datasets saved in the cache
"""
