#!/usr/bin/env python3
"""Independent reference for `[pairs]`'s filters (min_margin, min_margin_sigma, top_fraction).

Writes a small scored fixture (long layout; rewards multiples of 0.25, so every sum and margin is
exact and margins tie often) and, for each filter configuration and strategy, the counts the
pairs stage must report plus the prompt ids of the pairs kept, computed here in plain Python
from the definitions in docs/recipes.md:

- strategies: `max-min` (chosen = highest reward, rejected = lowest, ties to the lowest sample
  index) and `max-of-n-min-of-k` with k = 3, subset = "first" (chosen = highest of all,
  rejected = lowest of the first 3); a pair is skipped when sigma = 0, chosen == rejected, or the
  chosen reward is not strictly higher;
- sigma: population standard deviation (two passes: mean, then squared deviations);
- filters in order: min_margin (margin < value dropped), min_margin_sigma (margin / sigma <
  value dropped), top_fraction over what is left, per dataset: k = ceil(fraction * pairs) (a
  product within 1e-9 of a whole number counts as that number), keep margins above the k-th
  largest, and at it in input order until k are kept.

Several reward models (`[pairs] rank_by`, `agree`, `agree_min`): `scored.jsonl` is model `a`'s
scores; `scored-b.jsonl` (model `b`: a's plus noise) and `scored-c.jsonl` (model `c`:
independent) score the same samples. Per prompt, the ranking reward of a sample is:

- `rank_by = "<name>"`: that model's reward;
- `mean_z`: the mean over the models (in name order) of (reward - mean) / sigma, mean and
  population sigma over the prompt's samples (two passes, summed in sample order), a model with
  sigma = 0 on the prompt contributing 0;
- `weighted`: the sum over the weights (in name order) of weight * reward.

The strategies pick on the ranking reward, and margins and sigma are the ranking reward's. The
agreement filter comes first: a pair is kept when at least `agree_min` (default: all) of the
`agree` models give the chosen response a strictly higher reward than the rejected one.

    python scripts/filter_reference.py   # rewrites tests/fixtures/filters/*

tests/pairs.rs (`filters_match_the_python_reference`,
`agreement_and_margin_filters_match_the_python_reference`) runs the stage on the fixtures and
compares with expected.json and expected-models.json; no Python is needed there.
"""

import json
import math
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "filters"
N_PROMPTS = 60
N_SAMPLES = 6

CONFIGS = {
    "margin": {"min_margin": 3.0},
    "sigma": {"min_margin_sigma": 2.5},
    "top": {"top_fraction": 0.3},
    "all": {"min_margin": 2.0, "min_margin_sigma": 2.0, "top_fraction": 0.5},
    "top_all": {"top_fraction": 1.0},
}


def make_fixture():
    rng = random.Random(28)
    rows = []
    for p in range(N_PROMPTS):
        if p == 7:
            rewards = [0.5] * N_SAMPLES  # sigma = 0: no pair
        else:
            rewards = [rng.randint(-12, 12) / 4 for _ in range(N_SAMPLES)]
        for i, r in enumerate(rewards):
            rows.append(
                {
                    "prompt_id": f"f-{p:03d}",
                    "prompt": f"Question {p}?",
                    "sample_index": i,
                    "response": f"answer {p}.{i}",
                    "reward": r,
                }
            )
    return rows


def groups(rows):
    out = {}
    for r in rows:
        out.setdefault(r["prompt_id"], []).append(r["reward"])
    return list(out.items())


def sigma(rewards):
    if min(rewards) == max(rewards):
        return 0.0
    s = 0.0
    for r in rewards:
        s += r
    mean = s / len(rewards)
    sq = 0.0
    for r in rewards:
        sq += (r - mean) * (r - mean)
    return math.sqrt(sq / len(rewards))


def argmax(xs):
    return max(range(len(xs)), key=lambda i: (xs[i], -i))


def argmin(xs):
    return min(range(len(xs)), key=lambda i: (xs[i], i))


def pick(name, rewards):
    c = argmax(rewards)
    r = argmin(rewards) if name == "max-min" else argmin(rewards[:3])
    s = sigma(rewards)
    if s == 0 or c == r or not rewards[c] > rewards[r]:
        return None
    return rewards[c] - rewards[r], s


def keeps(fraction, m):
    x = fraction * m
    k = round(x) if abs(x - round(x)) < 1e-9 else math.ceil(x)
    return min(max(int(k), 0), m)


def margin_kept(cfg, margin, s, dropped):
    """Whether a pair passes min_margin, then min_margin_sigma; a drop is counted in `dropped`."""
    if "min_margin" in cfg and margin < cfg["min_margin"]:
        dropped["min_margin"] += 1
        return False
    if "min_margin_sigma" in cfg and margin / s < cfg["min_margin_sigma"]:
        dropped["min_margin_sigma"] += 1
        return False
    return True


def top_fraction(cands, cfg, dropped):
    """The pairs left after the margin filters, `cands` as (prompt id, margin) in input order:
    all, or with top_fraction the k largest margins (at the k-th, in input order)."""
    kept = [pid for pid, _ in cands]
    if "top_fraction" in cfg:
        m = len(cands)
        k = keeps(cfg["top_fraction"], m)
        kept = []
        if k > 0:
            t = sorted((x for _, x in cands), reverse=True)[k - 1]
            ties = k - sum(1 for _, x in cands if x > t)
            for pid, x in cands:
                if x > t:
                    kept.append(pid)
                elif x == t and ties > 0:
                    ties -= 1
                    kept.append(pid)
        dropped["top_fraction"] = m - k
    return {"pairs": len(kept), "dropped": dropped, "kept": kept}


def expected(rows, cfg, strategy):
    dropped = {k: 0 for k in ("min_margin", "min_margin_sigma", "top_fraction") if k in cfg}
    cands = []
    for pid, rewards in groups(rows):
        got = pick(strategy, rewards)
        if got is None:
            continue
        margin, s = got
        if margin_kept(cfg, margin, s, dropped):
            cands.append((pid, margin))
    return top_fraction(cands, cfg, dropped)


MODELS = ("a", "b", "c")

MODEL_CONFIGS = {
    "agree_ab": {"rank_by": "a", "agree": ["a", "b"]},
    "agree_bc_1_margin": {"rank_by": "a", "agree": ["b", "c"], "agree_min": 1, "min_margin": 4.0},
    "meanz_agree_2_sigma": {
        "rank_by": {"aggregate": "mean_z"},
        "agree": ["a", "b", "c"],
        "agree_min": 2,
        "min_margin_sigma": 1.8,
    },
    "weighted_top": {
        "rank_by": {"aggregate": "weighted", "weights": {"a": 0.7, "b": 0.3}},
        "agree": ["c"],
        "top_fraction": 0.5,
    },
    "b_margin": {"rank_by": "b", "min_margin": 5.0},
}


def make_models(rows):
    """Models b (a + noise) and c (independent) over the same samples as a's rows."""
    rng = random.Random(2828)
    out = {"a": rows, "b": [], "c": []}
    for r in rows:
        b = dict(r, reward=r["reward"] + rng.randint(-16, 16) / 4)
        c = dict(r, reward=rng.randint(-12, 12) / 4)
        out["b"].append(b)
        out["c"].append(c)
    return out


def mean_sigma(xs):
    s = 0.0
    for x in xs:
        s += x
    mean = s / len(xs)
    sq = 0.0
    for x in xs:
        sq += (x - mean) * (x - mean)
    return mean, math.sqrt(sq / len(xs))


def rank_rewards(rank_by, per_model):
    if isinstance(rank_by, str):
        return list(per_model[rank_by])
    n = len(next(iter(per_model.values())))
    out = [0.0] * n
    if rank_by["aggregate"] == "mean_z":
        for name in sorted(per_model):
            xs = per_model[name]
            mean, sd = mean_sigma(xs)
            if sd > 0:
                for i in range(n):
                    out[i] += (xs[i] - mean) / sd
        k = float(len(per_model))
        return [x / k for x in out]
    for name in sorted(rank_by["weights"]):
        w = rank_by["weights"][name]
        for i in range(n):
            out[i] += w * per_model[name][i]
    return out


def pick_at(name, rewards):
    c = argmax(rewards)
    r = argmin(rewards) if name == "max-min" else argmin(rewards[:3])
    s = sigma(rewards)
    if s == 0 or c == r or not rewards[c] > rewards[r]:
        return None
    return c, r, rewards[c] - rewards[r], s


def expected_models(models, cfg, strategy):
    keys = ("agree", "min_margin", "min_margin_sigma", "top_fraction")
    dropped = {k: 0 for k in keys if k in cfg}
    per_prompt = {}
    for name in MODELS:
        for pid, rewards in groups(models[name]):
            per_prompt.setdefault(pid, {})[name] = rewards
    cands = []
    for pid, per_model in per_prompt.items():
        ranked = rank_rewards(cfg["rank_by"], per_model)
        got = pick_at(strategy, ranked)
        if got is None:
            continue
        c, r, margin, s = got
        if "agree" in cfg:
            need = cfg.get("agree_min", len(cfg["agree"]))
            agreeing = sum(1 for m in cfg["agree"] if per_model[m][c] > per_model[m][r])
            if agreeing < need:
                dropped["agree"] += 1
                continue
        if margin_kept(cfg, margin, s, dropped):
            cands.append((pid, margin))
    return top_fraction(cands, cfg, dropped)


def toml_value(v):
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rows = make_fixture()
    with open(OUT / "scored.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    datasets = {"max-min": "max-min", "max-of-n-min-of-k": "max-of-n-min-of-3"}
    result = {
        name: {
            "config": cfg,
            "datasets": {
                ds: expected(rows, cfg, strategy) for strategy, ds in datasets.items()
            },
        }
        for name, cfg in CONFIGS.items()
    }
    (OUT / "expected.json").write_text(json.dumps(result, indent=1) + "\n")
    for name, r in result.items():
        print(name, {ds: (v["pairs"], v["dropped"]) for ds, v in r["datasets"].items()})

    models = make_models(rows)
    for name in ("b", "c"):
        with open(OUT / f"scored-{name}.jsonl", "w") as f:
            for r in models[name]:
                f.write(json.dumps(r) + "\n")
    result = {
        name: {
            "config": cfg,
            "toml": "".join(f"{k} = {toml_value(v)}\n" for k, v in cfg.items()),
            "datasets": {
                ds: expected_models(models, cfg, strategy) for strategy, ds in datasets.items()
            },
        }
        for name, cfg in MODEL_CONFIGS.items()
    }
    (OUT / "expected-models.json").write_text(json.dumps(result, indent=1) + "\n")
    for name, r in result.items():
        print(name, {ds: (v["pairs"], v["dropped"]) for ds, v in r["datasets"].items()})


if __name__ == "__main__":
    main()
