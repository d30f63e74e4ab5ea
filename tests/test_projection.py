"""UMAP maps of stored embeddings: cached, and refused when the vectors changed."""

from __future__ import annotations

import numpy as np
import pytest

from engine import projection, results


def test_projection_is_cached_and_checked(cache, two_evals):
    evals, _ = results.list_evaluations()
    key = evals[0].embeddings_key
    assert projection.cached(key) is None
    coords = projection.project(key)
    assert coords.shape == (60, 2) and np.isfinite(coords).all()
    assert np.array_equal(projection.cached(key), coords)
    assert len(list((cache / "projections").glob("*.npy"))) == 1
    npy = cache / "embeddings" / f"{key}.npy"
    arr = np.load(npy)
    arr[0, 0] += 1
    np.save(npy, arr)
    with pytest.raises(Exception, match="does not match"):
        projection.project(key, n_neighbors=5)
