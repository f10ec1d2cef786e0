"""Category prediction: a classifier on backbone descriptors fused with a kNN vote.

`p = alpha * p_model + (1 - alpha) * p_search`, where p_search is the similarity-weighted
vote of the nearest catalog images, and alpha is chosen on a held-out split.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

ALPHAS = np.round(np.linspace(0.0, 1.0, 11), 2)


class CategoryClassifier:
    """Multinomial logistic regression on L2-normalised pooled descriptors."""

    def __init__(self, *, C: float = 1.0, max_train: int = 20_000, seed: int = 0) -> None:
        self.C = C
        self.max_train = max_train
        self.seed = seed

    def fit(self, descriptors: np.ndarray, labels: np.ndarray) -> "CategoryClassifier":
        labels = np.asarray(labels)
        if len(descriptors) > self.max_train:
            keep = np.random.default_rng(self.seed).choice(len(descriptors), self.max_train, replace=False)
            descriptors, labels = descriptors[keep], labels[keep]
        model = LogisticRegression(C=self.C, max_iter=300).fit(np.asarray(descriptors, np.float32), labels)
        self.classes_ = model.classes_.astype(str)
        self.coef_ = model.coef_.astype(np.float32)
        self.intercept_ = model.intercept_.astype(np.float32)
        if len(self.classes_) == 2:  # sklearn keeps one row for two classes
            self.coef_ = np.concatenate([-self.coef_, self.coef_]) / 2
            self.intercept_ = np.concatenate([-self.intercept_, self.intercept_]) / 2
        return self

    def predict_proba(self, descriptors: np.ndarray) -> np.ndarray:
        return softmax(np.asarray(descriptors, np.float32) @ self.coef_.T + self.intercept_)


def knn_vote(neighbour_labels: np.ndarray, neighbour_scores: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Category distribution from the labels of each query's nearest images (Q x k, -1 = none).

    Votes are weighted by similarity; a query with no neighbours gets a uniform vote.
    """
    weights = np.where(neighbour_labels >= 0, np.maximum(neighbour_scores, 0.0) + 1e-3, 0.0)
    votes = np.zeros((len(neighbour_labels), len(classes)), np.float64)
    rows = np.repeat(np.arange(len(neighbour_labels)), neighbour_labels.shape[1])
    np.add.at(votes, (rows, np.maximum(neighbour_labels, 0).ravel()), weights.ravel())
    totals = votes.sum(axis=1, keepdims=True)
    return np.where(totals > 0, votes / np.where(totals > 0, totals, 1), 1.0 / len(classes))


def fuse(p_model: np.ndarray | None, p_search: np.ndarray, alpha: float) -> np.ndarray:
    return p_search if p_model is None else alpha * p_model + (1 - alpha) * p_search


def choose_alpha(p_model: np.ndarray, p_search: np.ndarray, truth: np.ndarray) -> float:
    """The fusion weight with the best held-out accuracy (ties go to the more balanced weight)."""
    accuracy = [((fuse(p_model, p_search, a).argmax(axis=1)) == truth).mean() for a in ALPHAS]
    best = max(accuracy)
    candidates = [a for a, acc in zip(ALPHAS, accuracy) if acc >= best - 1e-9]
    return float(min(candidates, key=lambda a: abs(a - 0.5)))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
