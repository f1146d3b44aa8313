"""DTP: downstream task performance of a representation, by probes fitted on one split.

Probes (standardised features):

* ``linear``: multinomial logistic regression (L2, C = 1);
* ``mlp``: one hidden layer of 64 ReLU units, L2 1e-3, Adam (200 epochs at most), fixed seed.

Tasks (named by :class:`.tasks.Tasks`; on the synthetic benchmark): ``activity`` (what the
encoders are trained for) and two they are never trained for: ``indoor`` (binary) and
``objects`` (multi-label, 8 object classes; scored by the macro ROC AUC over the object
classes present and absent in both splits, chance 0.5). On a labelled manifest: its
utility label.
Accuracies come with the chance level (always guessing the fit split's majority class).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

PROBES = ("linear", "mlp")


def make_probe(kind: str, seed: int) -> Pipeline:
    """A fresh, seeded probe of the given kind (an attacker's classifier is the same)."""
    if kind == "linear":
        clf = LogisticRegression(max_iter=500, C=1.0, random_state=seed)
    elif kind == "mlp":
        clf = MLPClassifier(hidden_layer_sizes=(64,), alpha=1e-3, max_iter=200,
                            random_state=seed)
    else:
        raise ValueError(f"probe kind must be one of {PROBES}, got {kind!r}")
    return make_pipeline(StandardScaler(), clf)


def fit_probe(kind: str, z: np.ndarray, y: np.ndarray, seed: int) -> Pipeline:
    probe = make_probe(kind, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(np.asarray(z, np.float64), y)
    return probe


def chance(y_fit: np.ndarray, y_test: np.ndarray) -> float:
    """Accuracy of always guessing the fit split's majority class."""
    values, counts = np.unique(y_fit, return_counts=True)
    return float(np.mean(np.asarray(y_test) == values[np.argmax(counts)]))


def probe_accuracy(kind: str, z_fit: np.ndarray, y_fit: np.ndarray, z_test: np.ndarray,
                   y_test: np.ndarray, seed: int = 0) -> float:
    """Accuracy on the test split of a probe fitted on the fit split."""
    y_fit, y_test = np.asarray(y_fit), np.asarray(y_test)
    if len(np.unique(y_fit)) < 2:
        return float(np.mean(y_test == y_fit[0]))
    probe = fit_probe(kind, z_fit, y_fit, seed)
    return float(np.mean(probe.predict(np.asarray(z_test, np.float64)) == y_test))


def multilabel_auc(kind: str, z_fit: np.ndarray, y_fit: np.ndarray, z_test: np.ndarray,
                   y_test: np.ndarray, seed: int = 0) -> float:
    """Macro ROC AUC over label columns (columns constant in a split are skipped).

    ``linear``: one logistic regression per column; ``mlp``: one network with a sigmoid
    output per column (scikit-learn's multi-label mode).
    """
    y_fit, y_test = np.asarray(y_fit), np.asarray(y_test)
    if y_fit.ndim != 2 or y_test.ndim != 2 or y_fit.shape[1] != y_test.shape[1]:
        raise ValueError(f"multi-label targets must be [N, L] in both splits, got {y_fit.shape}, {y_test.shape}")
    cols = [j for j in range(y_fit.shape[1])
            if len(np.unique(y_fit[:, j])) == 2 and len(np.unique(y_test[:, j])) == 2]
    if not cols:
        return float("nan")
    zt = np.asarray(z_test, np.float64)
    if kind == "mlp":
        scores = fit_probe(kind, z_fit, y_fit[:, cols], seed).predict_proba(zt)
    else:
        scores = np.stack([fit_probe(kind, z_fit, y_fit[:, j], seed).predict_proba(zt)[:, 1]
                           for j in cols], axis=1)
    return float(np.mean([roc_auc_score(y_test[:, j], scores[:, i]) for i, j in enumerate(cols)]))


def evaluate_dtp(z_fit: np.ndarray, labels_fit: Mapping[str, np.ndarray], z_test: np.ndarray,
                 labels_test: Mapping[str, np.ndarray], seed: int = 0,
                 probes: tuple[str, ...] = PROBES, tasks: Sequence[str] = ("activity", "indoor"),
                 multilabel: Sequence[str] = ("objects",)) -> dict[str, float]:
    """``{task}_{probe}`` + ``{task}_chance`` for every single-label task, and
    ``{name}_auc_{probe}`` + ``{name}_auc_chance`` (0.5) for every multi-label one
    (defaults: the synthetic benchmark's activity, indoor and objects)."""
    out: dict[str, float] = {}
    for task in tasks:
        for kind in probes:
            out[f"{task}_{kind}"] = probe_accuracy(kind, z_fit, labels_fit[task], z_test,
                                                   labels_test[task], seed)
        out[f"{task}_chance"] = chance(labels_fit[task], labels_test[task])
    for name in multilabel:
        for kind in probes:
            out[f"{name}_auc_{kind}"] = multilabel_auc(kind, z_fit, labels_fit[name], z_test,
                                                       labels_test[name], seed)
        out[f"{name}_auc_chance"] = 0.5
    return out
