#!/usr/bin/env python3
"""Renders chat templates with transformers and records the texts, for the Rust test
crates/sweetspot-model/tests/templates.rs (minijinja must render them the same).

Needs transformers and tokenizers. Run from the repository root:

    python3 scripts/make_template_fixtures.py

The templates are written here in the style of the Qwen2.5 and Qwen3 families' templates
(ChatML turns), using the Jinja features those use and the Llama ones do not: a default system
prompt when the conversation has none, a `tools` branch (not taken: sweetspot passes no tools,
as transformers does not for a plain chat), `namespace()` with two fields set in a loop,
reversed slicing `messages[::-1]`, Python string methods (`startswith`, `endswith`, `split`,
`rstrip`, `lstrip`), `is string` / `is defined` tests, `in` on strings, `loop.first`,
`loop.last`, `loop.index0`, and an `enable_thinking` switch that is undefined unless given.
Each is rendered for several conversations, with and without the generation prompt, through
`PreTrainedTokenizerFast.apply_chat_template(..., tokenize=False)`, and written to
tests/fixtures/templates/reference.json.
"""

import json
import os

import transformers
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "templates", "reference.json")

# ChatML with a default system prompt (as Qwen2.5's template has one).
CHATML_DEFAULT_SYSTEM = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- else %}{{- 'You are a careful assistant.' }}{%- endif %}
    {{- '\\n\\nTools:' }}
    {%- for tool in tools %}{{- '\\n' + tool | tojson }}{%- endfor %}
    {{- '<|im_end|>\\n' }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are a careful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == "user" or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>assistant\\n' + message.content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# ChatML with reasoning turns (as Qwen3's template handles them): the last user query is found
# by walking the messages backwards; assistant turns after it keep their reasoning, earlier
# ones lose it; `enable_thinking = false` pre-fills an empty think block.
CHATML_REASONING = """{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not (message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if message.role == "user" or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning = '' %}
        {%- if '</think>' in content %}
            {%- set reasoning = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or reasoning %}
                {{- '<|im_start|>assistant\\n<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- '<|im_start|>assistant\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>assistant\\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}
"""

TEMPLATES = {"chatml-default-system": CHATML_DEFAULT_SYSTEM, "chatml-reasoning": CHATML_REASONING}

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "system", "content": "Answer in one word."},
     {"role": "user", "content": "Capital of France?"}],
    [{"role": "user", "content": "Hi."},
     {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a fact.\n"}],
    [{"role": "user", "content": "Think first: 3 * 7?"},
     {"role": "assistant", "content": "<think>\nthree sevens\n</think>\n\n21"}],
    [{"role": "user", "content": "First?"},
     {"role": "assistant", "content": "<think>\nearly reasoning\n</think>\n\nOne."},
     {"role": "user", "content": "<tool_response>x</tool_response>"},
     {"role": "assistant", "content": "Two."}],
    [{"role": "system", "content": "Be brief."},
     {"role": "user", "content": "Ünïcödé and  spaces  "},
     {"role": "system", "content": "A late system turn."},
     {"role": "assistant", "content": "Noted."}],
]


def main():
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()))
    cases = []
    for name, template in TEMPLATES.items():
        for conv in CONVERSATIONS:
            for gen in (False, True):
                text = tok.apply_chat_template(conv, chat_template=template, tokenize=False,
                                               add_generation_prompt=gen)
                cases.append({"template": name, "messages": conv, "add_generation_prompt": gen,
                              "text": text})
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump({"templates": TEMPLATES, "cases": cases,
                   "transformers": transformers.__version__}, f, indent=1, ensure_ascii=False)
    print(len(cases), "cases")


if __name__ == "__main__":
    main()
