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


def two_sample_chi_square(a_all, b_all, min_count: int = 10) -> tuple[float, int]:
    """Two samples of the same size from (we claim) one distribution -> (chi-square statistic,
    categories). Categories: the values seen at least `min_count` times in both together, and
    one for everything else (dropped when empty); compare with chi2_critical(categories - 1)."""
    a_all, b_all = np.asarray(a_all), np.asarray(b_all)
    seen = np.concatenate([a_all, b_all])
    cats = [c for c in sorted(set(seen.tolist())) if (seen == c).sum() >= min_count]

    def counts(x):
        return np.array([(x == c).sum() for c in cats] + [np.isin(x, cats, invert=True).sum()], float)

    a, b = counts(a_all), counts(b_all)
    keep = (a + b) > 0
    a, b = a[keep], b[keep]
    pooled = (a + b) / (len(a_all) + len(b_all))
    return chi_square(a, pooled) + chi_square(b, pooled), len(a)
