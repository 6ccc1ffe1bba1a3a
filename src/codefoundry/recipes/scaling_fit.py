"""The Chinchilla-style loss law L(N, D) = E + A/N^α + B/D^β: its fit to measured points, percentile
bootstrap confidence intervals, and the compute-optimal split of a FLOP budget (numpy only).

Fit ("approach 3" of Hoffmann et al. 2022): minimise the sum over points of Huber_δ(log L̂ - log L), with
L̂ = exp(e) + exp(a - α log N) + exp(b - β log D) computed as a log-sum-exp, over θ = (e, a, b, α, β)
inside `BOUNDS`. A box-projected BFGS (for 5 parameters full BFGS is what L-BFGS turns into) runs from
each of the 1,875 points of `START_GRID` at once, batched in numpy, for EXPLORE iterations; the LEADERS
lowest go on to convergence and the best optimum is kept. The solver is ours so that thousands of starts and
resamples fit in one vectorised pass; the tests check it against scipy's L-BFGS-B.

Bootstrap: B resamples of the points with replacement (as multinomial counts: a weighted objective);
each refit starts from the full-data optimum and the `BOOT_STARTS` best grid points for that resample.
A refit that ends within 1e-6 of a bound is counted: its parameters there are set by the box, not by the
data (typical when a resample lost most distinct N or D values).

Compute-optimal: with C ≈ 6·N·D, N_opt(C) = G·(C/6)^(β/(α+β)), G = (αA/(βB))^(1/(α+β)) and
D_opt = C / (6·N_opt) minimise L(N, C/(6N)).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["BOUNDS", "Fit", "Law", "bootstrap_laws", "fit_law", "minimise", "objective", "percentile_ci", "search",
           "start_grid"]  # fmt: skip

NAMES = ("e", "a", "b", "alpha", "beta")
BOUNDS = np.array([(-10.0, 3.0), (-10.0, 60.0), (-10.0, 60.0), (0.01, 3.0), (0.01, 3.0)])  # (5, 2)
START_GRID = ((-1.0, 0.0, 1.0), (0.0, 5.0, 10.0, 15.0, 20.0), (0.0, 5.0, 10.0, 15.0, 20.0),
              (0.25, 0.5, 1.0, 1.5, 2.0), (0.25, 0.5, 1.0, 1.5, 2.0))  # fmt: skip
EXPLORE, REFINE = 100, 1000  # BFGS iterations from every start, then from the leaders only
LEADERS = 32  # starts of the full-data fit that go on after EXPLORE
BOOT_STARTS = 8  # grid starts of a bootstrap refit (besides the full-data optimum); 2 go on after EXPLORE
AT_BOUND = 1e-6
HALVINGS = 30


@dataclass(frozen=True)
class Law:
    """L(N, D) = E + A/N^alpha + B/D^beta."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    @classmethod
    def from_theta(cls, theta: np.ndarray) -> Law:
        e, a, b, alpha, beta = (float(v) for v in theta)
        return cls(math.exp(e), math.exp(a), math.exp(b), alpha, beta)

    def loss(self, n: Any, d: Any) -> Any:
        return self.E + self.A / np.power(n, self.alpha) + self.B / np.power(d, self.beta)

    def optimal(self, flops: float) -> tuple[float, float]:
        """(N_opt, D_opt) for a budget of `flops` ≈ 6·N·D (closed form)."""
        a, b = self.alpha, self.beta
        g = (a * self.A / (b * self.B)) ** (1.0 / (a + b))
        n = g * (flops / 6.0) ** (b / (a + b))
        return n, flops / (6.0 * n)

    def as_dict(self) -> dict[str, float]:
        return {"E": self.E, "A": self.A, "B": self.B, "alpha": self.alpha, "beta": self.beta}


def start_grid() -> np.ndarray:
    """Every combination of the START_GRID values: (1875, 5)."""
    return np.array(list(itertools.product(*START_GRID)), dtype=np.float64)


def objective(theta: np.ndarray, points: np.ndarray, weights: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Weighted Huber objective and its gradient for K parameter rows at once.

    theta (K, 5); points (3, M) rows log N, log D, log L; weights (K, M) (resampling counts, or ones).
    Returns f (K,) and grad (K, 5). The Huber loss is divided by delta (same minimum, gradients of
    order one)."""
    log_n, log_d, log_l = points
    e, a, b, alpha, beta = (theta[:, i : i + 1] for i in range(5))  # each (K, 1)
    terms = np.stack(np.broadcast_arrays(e, a - alpha * log_n, b - beta * log_d))  # (3, K, M)
    top = terms.max(axis=0)
    parts = np.exp(terms - top)
    total = parts.sum(axis=0)
    resid = top + np.log(total) - log_l  # (K, M): log L̂ - log L
    share = parts / total  # (3, K, M): d log L̂ / d (e, a, b)
    small = np.abs(resid) <= delta
    huber = np.where(small, 0.5 * resid**2 / delta, np.abs(resid) - 0.5 * delta)
    slope = weights * np.where(small, resid / delta, np.sign(resid))  # (K, M)
    grad = np.stack([(slope * share[0]).sum(1), (slope * share[1]).sum(1), (slope * share[2]).sum(1),
                     -(slope * share[1] * log_n).sum(1), -(slope * share[2] * log_d).sum(1)], axis=1)  # fmt: skip
    return (weights * huber).sum(axis=1), grad


def minimise(theta0: np.ndarray, points: np.ndarray, weights: np.ndarray, delta: float, *,
             iters: int = 500, gtol: float = 1e-9, ftol: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Box-projected BFGS on K independent problems at once (rows of theta0 (K, 5) with their weights
    (K, M)); returns the optima (K, 5) and objective values (K,). Each iteration works on the problems
    still running only; one stops when its projected gradient or its decrease is below tolerance."""
    lo, hi = BOUNDS[:, 0], BOUNDS[:, 1]
    k, p = theta0.shape
    x = np.clip(theta0, lo, hi)
    f, g = objective(x, points, weights, delta)
    inv_h = np.zeros((k, p, p))  # inverse-Hessian estimates; zero = not started (first step: scaled -g)
    live = np.arange(k)
    for _ in range(iters):
        xs, fs, gs, hs, ws = x[live], f[live], g[live], inv_h[live], weights[live]
        # coordinates pinned at a bound with the gradient pushing outward do not move
        free = ~(((xs <= lo) & (gs > 0)) | ((xs >= hi) & (gs < 0)))
        pg = np.where(free, gs, 0.0)
        step = np.where(free, -np.einsum("kij,kj->ki", hs, pg), 0.0)
        # no estimate yet, or one that lost positive definiteness: a short steepest-descent step
        fresh = (step * pg).sum(1) >= 0
        step[fresh] = -pg[fresh] / np.maximum(1.0, np.linalg.norm(pg[fresh], axis=1, keepdims=True))
        x_new, f_new, g_new = _backtrack(xs, fs, gs, step, points, ws, delta)
        s, y = x_new - xs, g_new - gs
        sy = (s * y).sum(1)
        ok = sy > 1e-16
        scale = fresh & ok  # the first estimate: (s·y / y·y) I, Shanno and Phua's scaling
        hs[scale] = (sy[scale] / (y[scale] ** 2).sum(1))[:, None, None] * np.eye(p)
        if ok.any():
            rho = 1.0 / sy[ok]
            v = np.eye(p)[None] - rho[:, None, None] * np.einsum("ki,kj->kij", s[ok], y[ok])
            ss = rho[:, None, None] * np.einsum("ki,kj->kij", s[ok], s[ok])
            hs[ok] = v @ hs[ok] @ v.transpose(0, 2, 1) + ss
        x[live], f[live], g[live], inv_h[live] = x_new, f_new, g_new, hs
        free = ~(((x_new <= lo) & (g_new > 0)) | ((x_new >= hi) & (g_new < 0)))
        small_grad = np.linalg.norm(np.where(free, g_new, 0.0), axis=1) <= gtol
        stalled = fs - f_new <= ftol * np.maximum(1.0, np.abs(fs))
        live = live[~(small_grad | stalled)]
        if not len(live):
            break
    return x, f


def _backtrack(x, f, g, step, points, weights, delta):  # noqa: ANN001, ANN202
    """Armijo backtracking along the projected path x + t·step, per problem: t = 1 first, then every
    t = 2^-1 .. 2^-HALVINGS at once for the problems t = 1 did not suit (the first that suits is taken);
    a problem with no decrease even at the smallest step stays where it is."""
    lo, hi = BOUNDS[:, 0], BOUNDS[:, 1]
    x_new = np.clip(x + step, lo, hi)
    f_new, g_new = objective(x_new, points, weights, delta)
    todo = np.flatnonzero(f_new > f + 1e-4 * (g * (x_new - x)).sum(1))
    if len(todo):
        ts = 0.5 ** np.arange(1, HALVINGS + 1)  # (H,)
        trial = np.clip(x[todo, None] + ts[None, :, None] * step[todo, None], lo, hi)  # (T, H, 5)
        flat = trial.reshape(-1, trial.shape[-1])
        f_try, g_try = objective(flat, points, np.repeat(weights[todo], HALVINGS, axis=0), delta)
        f_try, g_try = f_try.reshape(len(todo), HALVINGS), g_try.reshape(len(todo), HALVINGS, -1)
        armijo = f_try <= f[todo, None] + 1e-4 * (g[todo, None] * (trial - x[todo, None])).sum(2)
        # the longest step that suits, else the lowest value (no decrease at all is caught below)
        first = np.where(armijo.any(1), np.argmax(armijo, axis=1), np.argmin(f_try, axis=1))
        rows = np.arange(len(todo))
        x_new[todo], f_new[todo], g_new[todo] = trial[rows, first], f_try[rows, first], g_try[rows, first]
    failed = f_new > f
    x_new[failed], f_new[failed], g_new[failed] = x[failed], f[failed], g[failed]
    return x_new, f_new, g_new


def _points(n: Any, d: Any, loss: Any) -> np.ndarray:
    points = np.log(np.array([n, d, loss], dtype=np.float64))  # (3, M)
    if points.ndim != 2 or points.shape[1] < 5 or not np.isfinite(points).all():
        raise ValueError("scaling-law fit: needs at least 5 points with positive N, D and loss")
    return points


def at_bound(theta: np.ndarray) -> np.ndarray:
    """(K, 5) bool: which parameters ended at a bound of the box."""
    return (theta - BOUNDS[:, 0] <= AT_BOUND) | (BOUNDS[:, 1] - theta <= AT_BOUND)


@dataclass(frozen=True)
class Fit:
    law: Law
    theta: np.ndarray  # (5,) e, a, b, alpha, beta
    objective: float
    at_bound: tuple[str, ...]  # names of the parameters at a bound
    rmse_log: float  # root-mean-square of log L̂ - log L over the points
    r2: float  # 1 - SS_res / SS_tot of L itself


def search(starts: np.ndarray, counts: np.ndarray, points: np.ndarray, delta: float, *,
           keep: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Best optimum per problem: starts (R, S, 5) for R problems with weights counts (R, M). BFGS runs
    EXPLORE iterations from all S starts, then the `keep` best of each problem go on for up to REFINE
    more (most starts crawl along a flat valley; the tests check the result against scipy's L-BFGS-B).
    Returns the optima (R, 5) and their objective values (R,)."""
    r, s, p = starts.shape
    rows = np.arange(r)
    theta, values = minimise(starts.reshape(-1, p), points, counts.repeat(s, 0), delta, iters=EXPLORE)
    leaders = np.argsort(values.reshape(r, s), axis=1)[:, :keep]  # (R, keep)
    chosen = theta.reshape(r, s, p)[rows[:, None], leaders]  # (R, keep, 5)
    theta, values = minimise(chosen.reshape(-1, p), points, counts.repeat(keep, 0), delta, iters=REFINE)
    best = np.argmin(values.reshape(r, keep), axis=1)
    return theta.reshape(r, keep, p)[rows, best], values.reshape(r, keep)[rows, best]


def fit_law(n: Any, d: Any, loss: Any, *, delta: float = 1e-3) -> Fit:
    """The best fit over every start of the grid (see the module doc)."""
    points = _points(n, d, loss)
    theta, value = search(start_grid()[None], np.ones((1, points.shape[1])), points, delta, keep=LEADERS)
    best = theta[0]
    law = Law.from_theta(best)
    measured = np.exp(points[2])
    predicted = law.loss(np.exp(points[0]), np.exp(points[1]))
    rmse = float(np.sqrt(np.mean((np.log(predicted) - points[2]) ** 2)))
    spread = max(1e-300, float(((measured - measured.mean()) ** 2).sum()))
    r2 = 1.0 - float(((predicted - measured) ** 2).sum()) / spread
    names = tuple(NAMES[i] for i in np.flatnonzero(at_bound(best[None])[0]))
    return Fit(law, best, float(value[0]), names, rmse, r2)


def bootstrap_laws(n: Any, d: Any, loss: Any, best: np.ndarray, *, samples: int, seed: int,
                   delta: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """`samples` refits on resamples of the points with replacement: (thetas (samples, 5), at a bound
    (samples,) bool). Resample r draws from a generator seeded by (seed, r)."""
    points = _points(n, d, loss)
    m = points.shape[1]
    # how often each point was drawn, per resample: (samples, M)
    counts = np.stack([np.bincount(np.random.default_rng([seed, r]).integers(0, m, m), minlength=m)
                       for r in range(samples)]).astype(np.float64)  # fmt: skip
    grid = start_grid()
    # the grid's objective under each resample's weights: (samples, G)
    scores = np.stack([objective(grid, points, np.broadcast_to(c, (len(grid), m)), delta)[0] for c in counts])
    picks = np.argsort(scores, axis=1)[:, :BOOT_STARTS]  # (samples, BOOT_STARTS)
    starts = np.concatenate([best[None, None].repeat(samples, 0), grid[picks]], axis=1)  # (samples, S, 5)
    theta, _ = search(starts, counts, points, delta, keep=2)
    return theta, at_bound(theta).any(axis=1)


def percentile_ci(values: np.ndarray) -> tuple[float, float]:
    """The 95% percentile interval of bootstrap values (NaN-free)."""
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)
