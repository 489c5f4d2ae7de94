"""Distances between a set of generated images and held-out data, as the demo reports them.

- :func:`sliced_wasserstein`: the sliced 2-Wasserstein distance between two point clouds in
  pixel space (exact 1-d W2 between the empirical projections, averaged over random directions).
- :class:`DigitClassifier`: a logistic-regression digit classifier fitted on the training split;
  on generated digits it reports the mean confidence (the largest class probability) and the
  entropy of the predicted-label histogram (log2(10) = 3.32 bits when every digit is equally
  frequent, lower when the sampler drops digits).
- :func:`total_variation`: mean absolute difference between neighbouring pixels, a roughness
  measure (smooth, cartoon-like images have less).
"""
import math

import torch


def _flat(x, name):
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] < 1:
        raise ValueError(f"{name}: expected a non-empty (N, ...) tensor")
    x = x.detach().flatten(1).double().cpu()
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: expected finite values")
    return x


def wasserstein_1d(a, b):
    """Exact W2 between the empirical distributions of the rows' values: ``a`` (P, n), ``b``
    (P, m) -> (P,). Both quantile functions are step functions; they are compared on the union
    of their breakpoints, so n != m is exact too."""
    a, b = torch.sort(a, dim=1).values, torch.sort(b, dim=1).values
    n, m = a.shape[1], b.shape[1]
    q = torch.unique(torch.cat([torch.arange(1, n + 1, dtype=torch.float64) / n,
                                torch.arange(1, m + 1, dtype=torch.float64) / m]))
    w = torch.diff(q, prepend=q.new_zeros(1))
    mid = q - w / 2
    ia = torch.clamp((mid * n).long(), max=n - 1)
    ib = torch.clamp((mid * m).long(), max=m - 1)
    return torch.sqrt(((a[:, ia] - b[:, ib]) ** 2 * w).sum(1))


def sliced_wasserstein(x, y, *, projections=512, seed=0):
    """Sliced W2 distance between sample sets ``x`` (N, ...) and ``y`` (M, ...) of the same
    event shape: ``sqrt(mean_theta W2(theta.x, theta.y)^2)`` over ``projections`` uniformly
    random unit directions drawn from ``seed`` (the same directions for every call with that
    seed, so distances from one seed compare)."""
    x, y = _flat(x, "x"), _flat(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"y: expected samples of {x.shape[1]} values like x, got {y.shape[1]}")
    if isinstance(projections, bool) or not isinstance(projections, int) or projections < 1:
        raise ValueError(f"projections: expected a positive int, got {projections!r}")
    g = torch.Generator().manual_seed(int(seed))
    theta = torch.randn(projections, x.shape[1], generator=g, dtype=torch.float64)
    theta /= theta.norm(dim=1, keepdim=True)
    w = wasserstein_1d(theta @ x.T, theta @ y.T)
    return float(torch.sqrt((w ** 2).mean()))


def total_variation(x):
    """Mean |difference| between horizontally and vertically neighbouring pixels, per image
    (N,), for (N, C, H, W) images."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError("x: expected (N, C, H, W) images")
    x = x.detach().double().cpu()
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1)
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1)
    return torch.cat([dh, dw], 1).mean(1)


class DigitClassifier:
    """Multinomial logistic regression on the 64 pixels (scikit-learn), fitted on the training
    split. ``accuracy(x, y)`` on labelled data; ``judge(x)`` on generated images."""

    def __init__(self, x_train, y_train, *, C=0.1, seed=0):
        from sklearn.linear_model import LogisticRegression

        x = _flat(x_train, "x_train").numpy()
        y = torch.as_tensor(y_train).cpu().numpy()
        if y.shape != (x.shape[0],):
            raise ValueError(f"y_train: expected {x.shape[0]} labels, got shape {y.shape}")
        self.dim = x.shape[1]
        self.clf = LogisticRegression(C=C, max_iter=5000, random_state=seed).fit(x, y)
        self.classes = len(self.clf.classes_)

    def _x(self, x):
        x = _flat(x, "x")
        if x.shape[1] != self.dim:
            raise ValueError(f"x: expected images of {self.dim} pixels, got {x.shape[1]}")
        return x.numpy()

    def proba(self, x):
        return torch.from_numpy(self.clf.predict_proba(self._x(x)))

    def accuracy(self, x, y):
        return float((self.proba(x).argmax(1) == torch.as_tensor(y).cpu()).double().mean())

    def judge(self, x):
        """``{"confidence": mean largest class probability, "label_entropy": entropy in bits of
        the histogram of predicted labels}``."""
        p = self.proba(x)
        hist = torch.bincount(p.argmax(1), minlength=self.classes).double()
        hist /= hist.sum()
        nz = hist[hist > 0]
        return {"confidence": float(p.max(1).values.mean()),
                "label_entropy": float(-(nz * torch.log2(nz)).sum())}


MAX_LABEL_ENTROPY = math.log2(10)
