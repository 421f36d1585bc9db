#!/usr/bin/env python3
"""Independent reference of sweetspot's selection rule, in plain Python.

Reads a grouped-layout JSONL file (SimPO's on-policy layout) and writes, for every dataset the
quickstart recipe builds, the (prompt_id, chosen_index, rejected_index) of each pair and the
number of groups skipped per reason. The Rust test `pairs_match_the_python_reference` in `tests/pairs.rs` compares sweetspot's
output with this file.

Rule (from the foundation issue): per prompt, mu = mean, sigma = population std (ddof = 0);
`min` = lowest reward, `max` = highest, a number k = the sample whose reward is nearest to
mu + k*sigma; ties go to the lowest sample index. Skip when sigma = 0, when chosen and rejected
are the same sample, or when the chosen reward is not strictly higher.

    python3 scripts/reference_pairs.py examples/quickstart/scored.jsonl \
        > tests/fixtures/reference_pairs.json
"""

import json
import math
import sys

POINTS = ["min", -2.0, -1.0, 0.0, 1.0, 2.0, "max"]


def label(p):
    if p in ("min", "max"):
        return p
    if p == 0:
        return "0"
    return f"+{p:g}" if p > 0 else f"{p:g}"


def order(p):
    return {"min": -math.inf, "max": math.inf}.get(p, p) if isinstance(p, str) else p


def stats(rewards):
    n = len(rewards)
    mu = sum(rewards) / n
    if min(rewards) == max(rewards):
        return rewards[0], 0.0
    return mu, math.sqrt(sum((r - mu) ** 2 for r in rewards) / n)


def select(rewards, mu, sigma, p):
    if p == "min":
        key = lambda i: rewards[i]
    elif p == "max":
        key = lambda i: -rewards[i]
    else:
        target = mu + p * sigma
        key = lambda i: abs(rewards[i] - target)
    # min() returns the first minimal element: ties go to the lowest index
    return min(range(len(rewards)), key=key)


def check(rewards, sigma, c, r):
    if sigma == 0.0:
        return "sigma_zero"
    if c == r:
        return "same_sample"
    if not rewards[c] > rewards[r]:
        return "chosen_not_higher"
    return None


def main():
    path = sys.argv[1]
    datasets = {}
    pts = sorted(POINTS, key=order)
    names = []
    for ci in range(len(pts) - 1, -1, -1):
        for ri in range(ci):
            names.append((f"grid_{label(pts[ci])}_vs_{label(pts[ri])}", pts[ci], pts[ri]))
    for name, _, _ in names + [("max-min", None, None), ("max-of-n-min-of-5", None, None)]:
        datasets[name] = {"pairs": [], "skipped": {}}

    def record(name, pid, rewards, sigma, c, r):
        reason = check(rewards, sigma, c, r)
        if reason:
            d = datasets[name]["skipped"]
            d[reason] = d.get(reason, 0) + 1
        else:
            datasets[name]["pairs"].append([pid, c, r])

    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            pid, rewards = row["prompt_id"], row["all_rm_scores"]
            mu, sigma = stats(rewards)
            for name, cp, rp in names:
                record(name, pid, rewards, sigma, select(rewards, mu, sigma, cp),
                       select(rewards, mu, sigma, rp))
            record("max-min", pid, rewards, sigma, select(rewards, mu, sigma, "max"),
                   select(rewards, mu, sigma, "min"))
            pool = list(range(min(5, len(rewards))))
            rej = min(pool, key=lambda i: rewards[i])
            record("max-of-n-min-of-5", pid, rewards, sigma, select(rewards, mu, sigma, "max"), rej)
    json.dump(datasets, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
