#!/usr/bin/env python3
"""Writes the small scored example datasets shipped in examples/.

Deterministic (fixed seed), standard library only for the JSONL files; the Parquet copies need
pyarrow (`pip install pyarrow`). The same samples are written in both layouts:

- examples/quickstart/scored.jsonl        grouped (SimPO on-policy layout), the quickstart input
- examples/data/scored-long.jsonl         long layout (one row per sample), same data
- examples/data/scored-grouped.parquet    grouped layout, written by pyarrow
- examples/data/scored-long.parquet       long layout, written by pyarrow

Rewards are on ArmoRM's scale (about 0.05 to 0.2). Prompt 7 has equal rewards (sigma = 0) and
every fifth prompt is a chat (system + user) prompt, so the examples exercise those paths.

Run from the repository root: python3 scripts/make_example_data.py
"""

import json
import os
import random

N_PROMPTS = 40
N_SAMPLES = 16
SEED = 20250301

TOPICS = [
    "the water cycle", "binary search", "photosynthesis", "the French Revolution",
    "compound interest", "TCP handshakes", "black holes", "vaccines", "supply and demand",
    "recursion", "plate tectonics", "the Pythagorean theorem", "garbage collection",
    "the immune system", "inflation", "neural networks", "the Doppler effect",
    "hash tables", "climate feedback loops", "the printing press",
]
ASKS = [
    "Explain {t} to a twelve-year-old.",
    "Give three surprising facts about {t}.",
    "Write a short paragraph on why {t} matters.",
    "What is a common misconception about {t}?",
]
OPENERS = ["Sure!", "Great question.", "Here is a short answer.", "Let me explain.", "In short:"]
STYLES = [
    "{o} {T} comes down to one idea: small steps add up to a large effect.",
    "{o} Think of {t} like a relay race where each runner hands on the baton.",
    "{o} Many people get {t} wrong; the key is what happens at each stage.",
    "{o} {T} is easier with an example, so let us walk through one.",
    "{o} I am not sure, but {t} may have something to do with energy.",
    "{o} Step 1: define {t}. Step 2: look at an example. Step 3: check the edge cases.",
]


def main():
    rng = random.Random(SEED)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    grouped, long_rows = [], []
    for p in range(N_PROMPTS):
        topic = TOPICS[p % len(TOPICS)]
        text = ASKS[(p // len(TOPICS) + p) % len(ASKS)].format(t=topic)
        if p % 5 == 4:
            prompt = [
                {"role": "system", "content": "You are a patient teacher."},
                {"role": "user", "content": text},
            ]
        else:
            prompt = text
        prompt_id = f"ex-{p:03d}"
        mu = rng.uniform(0.06, 0.16)
        sd = rng.uniform(0.004, 0.03)
        responses, scores = [], []
        for i in range(N_SAMPLES):
            style = STYLES[rng.randrange(len(STYLES))]
            resp = style.format(o=rng.choice(OPENERS), t=topic, T=topic[0].upper() + topic[1:])
            responses.append(f"{resp} (draft {i + 1})")
            if p == 7:
                scores.append(0.125)  # every reward equal: sigma = 0
            else:
                # a slightly left-skewed spread: occasional poor answers
                r = rng.gauss(mu, sd) - (rng.expovariate(1.0) * sd if rng.random() < 0.2 else 0.0)
                scores.append(round(r, 6))
        grouped.append({
            "prompt_id": prompt_id,
            "prompt": prompt,
            "all_generated_responses": responses,
            "all_rm_scores": scores,
        })
        # long layout, rows of a prompt contiguous but not in sample order
        order = list(range(N_SAMPLES))
        rng.shuffle(order)
        for i in order:
            long_rows.append({
                "prompt_id": prompt_id,
                "prompt": prompt,
                "sample_index": i,
                "response": responses[i],
                "reward": scores[i],
            })

    def write_jsonl(path, rows):
        path = os.path.join(root, path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")

    write_jsonl("examples/quickstart/scored.jsonl", grouped)
    write_jsonl("examples/data/scored-long.jsonl", long_rows)

    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        print("pyarrow not installed: skipped the Parquet copies")
        return
    # A Parquet column has one type, so the Parquet copies store every prompt as a message list
    # (a plain prompt becomes one user message), which is how TRL stores prompts.
    def as_messages(prompt):
        return prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]

    g = [dict(r, prompt=as_messages(r["prompt"])) for r in grouped]
    l = [dict(r, prompt=as_messages(r["prompt"])) for r in long_rows]
    pq.write_table(pa.Table.from_pylist(g), os.path.join(root, "examples/data/scored-grouped.parquet"))
    pq.write_table(pa.Table.from_pylist(l), os.path.join(root, "examples/data/scored-long.parquet"))


if __name__ == "__main__":
    main()
