#!/usr/bin/env python3
"""Reference for sweetspot's length-controlled win rate (crates/sweetspot-runner/src/winrate.rs).

Writes tests/fixtures/winrate_reference.json: per-prompt outcomes (1 win, 0.5 tie, 0 loss) and
length differences of a few synthetic comparisons, and statsmodels' maximum-likelihood fit of
P(win) = sigmoid(b + w * tanh(dlen / sd(dlen))) (GLM, Binomial family, no regularization;
sd: pandas' sample standard deviation), with 100 * sigmoid(b), the win rate at equal length.

    pip install statsmodels numpy pandas
    python3 scripts/lc_winrate_reference.py
"""
import json
import pathlib

import numpy as np
import pandas as pd
import statsmodels.api as sm

rng = np.random.default_rng(20261202)
cases = []
for name, n, bias, length_effect in [
    ("balanced", 40, 0.0, 0.0),
    ("longer-wins", 60, 0.3, 1.5),
    ("shorter-wins", 50, -0.2, -1.0),
    ("with-ties", 30, 0.5, 0.8),
]:
    dlen = rng.integers(-80, 120, size=n).astype(float)
    x = np.tanh(dlen / pd.Series(dlen).std())
    p = 1.0 / (1.0 + np.exp(-(bias + length_effect * x)))
    y = (rng.random(n) < p).astype(float)
    if name == "with-ties":
        y[rng.random(n) < 0.25] = 0.5
    X = sm.add_constant(x)
    fit = sm.GLM(y, X, family=sm.families.Binomial()).fit(tol=1e-14, maxiter=200)
    b, w = (float(v) for v in fit.params)
    cases.append(
        {
            "name": name,
            "outcomes": y.tolist(),
            "dlen": dlen.tolist(),
            "b": b,
            "w": w,
            "lc_win_rate": 100.0 / (1.0 + np.exp(-b)),
            "win_rate": 100.0 * float(y.mean()),
        }
    )

out = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/winrate_reference.json"
out.write_text(json.dumps({"statsmodels": sm.__version__, "cases": cases}, indent=1) + "\n")
print(out)
for c in cases:
    print(f"{c['name']:>14}: win {c['win_rate']:.4f}  lc {c['lc_win_rate']:.10f}  w {c['w']:.6f}")
