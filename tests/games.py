"""Exact answers for coalition games, the ground truth the Shapley estimators are tested against."""

from __future__ import annotations

import itertools
import math

import numpy as np


def brute_force_shapley(value_fn, m: int) -> np.ndarray:
    """The Shapley formula over all 2^M coalitions (one batched call to ``value_fn`` with float32 0/1 rows)."""
    coalitions = np.array(list(itertools.product([0, 1], repeat=m)), np.float32)
    values = dict(zip(map(tuple, coalitions.astype(int)), np.asarray(value_fn(coalitions), np.float64)))
    phi = np.zeros(m)
    for key, value in values.items():
        size = sum(key)
        for i in range(m):
            if key[i]:
                without = key[:i] + (0,) + key[i + 1:]
                weight = math.factorial(size - 1) * math.factorial(m - size) / math.factorial(m)
                phi[i] += weight * (value - values[without])
    return phi
