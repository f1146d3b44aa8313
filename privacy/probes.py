"""Linear probes: how much of a label a representation makes linearly decodable.

Used both ways round: high activity-probe accuracy means the MSR kept utility, high
identity-probe accuracy means it leaks who wore the camera. The probe is an attacker
fitted on its own data (a disjoint split), never a network used in training.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def linear_probe_accuracy(
    z_fit: np.ndarray, y_fit: np.ndarray, z_test: np.ndarray, y_test: np.ndarray, seed: int = 0
) -> float:
    """Fit a standardised multinomial logistic regression on one split, score the other."""
    if len(np.unique(y_fit)) < 2:
        # A constant label: the best any probe can do is predict it.
        return float(np.mean(y_test == y_fit[0]))
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, C=1.0,
                                                               random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(z_fit, y_fit)
    return float(probe.score(z_test, y_test))


def chance_accuracy(y_fit: np.ndarray, y_test: np.ndarray) -> float:
    """Accuracy of always guessing the fit split's majority class."""
    values, counts = np.unique(y_fit, return_counts=True)
    return float(np.mean(y_test == values[np.argmax(counts)]))
