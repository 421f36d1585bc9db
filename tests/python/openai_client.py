"""Drives `sweetspot serve` with the official `openai` Python client, unchanged.

Usage: openai_client.py BASE_URL   (the server runs with API key k-123, served name `tiny`)
Prints one JSON object for tests/serve.rs to check against in-process generation.
"""

import json
import sys

import openai

base = sys.argv[1]
client = openai.OpenAI(base_url=base, api_key="k-123", max_retries=0)
out = {"models": [m.id for m in client.models.list().data]}

prompt_ids = [1, 7, 9, 3, 12]
completion = client.completions.create(
    model="tiny",
    prompt=prompt_ids,
    n=3,
    seed=5,
    temperature=0.8,
    top_p=0.95,
    max_tokens=6,
    extra_body={"return_token_ids": True},
)
out["prompt_ids"] = prompt_ids
out["completion"] = completion.model_dump()

chat = client.chat.completions.create(
    model="tiny",
    messages=[{"role": "user", "content": "hello there"}],
    n=2,
    seed=1,
    temperature=0.7,
    max_tokens=5,
    stop=["\n\n"],
)
out["chat"] = chat.model_dump()

try:
    openai.OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()
    out["wrong_key"] = "accepted"
except openai.AuthenticationError:
    out["wrong_key"] = "AuthenticationError"

try:
    client.completions.create(model="tiny", prompt="x", max_tokens=2, frequency_penalty=0.5)
    out["unknown_field"] = "accepted"
except openai.BadRequestError:
    out["unknown_field"] = "BadRequestError"

print(json.dumps(out))
