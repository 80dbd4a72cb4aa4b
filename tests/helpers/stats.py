"""The chi-square goodness-of-fit check used by the statistical sampling tests."""

import numpy as np


def chi2_critical(df, z=3.09):
    """Wilson-Hilferty chi-square quantile; z = 3.09 is p = 0.001 (a correct sampler fails 1 run in 1000)."""
    return df * (1 - 2 / (9 * df) + z * np.sqrt(2 / (9 * df))) ** 3


def chi_square(counts, expected_probs):
    n = counts.sum()
    e = expected_probs * n
    keep = e > 0
    return float((((counts - e) ** 2)[keep] / e[keep]).sum())
