"""Exact reference for the bench: the matching problem as a MILP, solved by HiGHS (``scipy.optimize.milp``,
the optional ``bench`` extra). Never imported by the library or the tests."""

from __future__ import annotations

import numpy as np
import torch


def milp_optimum(
    unary: torch.Tensor, quad: torch.Tensor, el: torch.Tensor, er: torch.Tensor, time_limit: float = 60.0
) -> tuple[float, float, bool]:
    """``(best objective found, proven lower bound, proven optimal)`` of one problem.

    Linearisation: ``x_ik`` binary, ``y_ab ∈ [0, 1]`` per left edge ``a = (i, j)`` and right edge
    ``b = (k, l)`` with ``Q_ab ≠ 0`` (duplicates merged); ``Σ_{b from k} y_ab ≤ x_ik`` and
    ``Σ_{b into l} y_ab ≤ x_jl`` (at most one image per edge, valid for all ``y``), and for positive costs
    ``y_ab ≥ x_ik + x_jl - 1``. Rows and columns are matched at most once.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

    u, q = unary.double().numpy(), quad.double().numpy()
    a, b = el.numpy(), er.numpy()
    n1, n2 = u.shape
    keep_a = (a >= 0).all(0) & (a[0] != a[1])
    keep_b = (b >= 0).all(0) & (b[0] != b[1])
    merged: dict[tuple[int, int, int, int, int], float] = {}
    for ia in np.nonzero(keep_a)[0]:
        for ib in np.nonzero(keep_b)[0]:
            if q[ia, ib] != 0.0:
                key = (int(ia), int(a[0, ia]), int(a[1, ia]), int(b[0, ib]), int(b[1, ib]))
                merged[key] = merged.get(key, 0.0) + float(q[ia, ib])
    terms = list(merged.items())
    nx, ny = n1 * n2, len(terms)
    cost = np.concatenate([u.reshape(-1), np.array([value for _, value in terms])])
    rows, cols, vals, lower, upper = [], [], [], [], []

    def add(entries: list[tuple[int, float]], lo: float, hi: float) -> None:
        row = len(lower)
        for col, val in entries:
            rows.append(row)
            cols.append(col)
            vals.append(val)
        lower.append(lo)
        upper.append(hi)

    for i in range(n1):
        add([(i * n2 + k, 1.0) for k in range(n2)], -np.inf, 1.0)
    for k in range(n2):
        add([(i * n2 + k, 1.0) for i in range(n1)], -np.inf, 1.0)
    groups: dict[tuple[int, int, int], list[int]] = {}
    for index, ((edge, i, j, k, m), value) in enumerate(terms):
        groups.setdefault((edge, 0, k), []).append(index)
        groups.setdefault((edge, 1, m), []).append(index)
        if value > 0:
            add([(nx + index, 1.0), (i * n2 + k, -1.0), (j * n2 + m, -1.0)], -1.0, np.inf)
    for (_edge, side, node), members in groups.items():
        i, j = terms[members[0]][0][1], terms[members[0]][0][2]
        owner = (i if side == 0 else j) * n2 + node
        add([(nx + index, 1.0) for index in members] + [(owner, -1.0)], -np.inf, 0.0)
    matrix = coo_matrix((vals, (rows, cols)), shape=(len(lower), nx + ny)).tocsr()
    integrality = np.concatenate([np.ones(nx), np.zeros(ny)])
    result = milp(
        cost,
        constraints=LinearConstraint(matrix, lower, upper),
        integrality=integrality,
        bounds=Bounds(0.0, 1.0),
        options={"time_limit": time_limit, "mip_rel_gap": 1e-7, "disp": False},
    )
    if result.x is None:
        return float("inf"), float(getattr(result, "mip_dual_bound", -np.inf)), False
    bound = getattr(result, "mip_dual_bound", None)
    proven = result.status == 0
    return float(result.fun), float(result.fun if proven or bound is None else bound), proven
