"""Letter vectors: extraction from a model, long letters in windows, and UMAP maps of them.

windows     long letters read in overlapping windows of max_length tokens, their vectors pooled into one
extract     embedding extraction (pooling, batching, streaming to disk, cache)
projection  UMAP maps of stored embeddings, cached
"""
