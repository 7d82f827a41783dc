"""Token-by-token grammar checks give llama.cpp's constrained answers, at a fraction of the cost."""

from __future__ import annotations

import pytest

from nodes import prompts

pytestmark = pytest.mark.slow

MESSAGES = [
    {"role": "system", "content": "You recommend video games. Answer in JSON."},
    {
        "role": "user",
        "content": "History: "
        + ", ".join(f"Game number {i} deluxe edition" for i in range(30))
        + ". Plan the next step, then name one title.",
    },
]
SCHEMAS = [prompts.Plan, prompts.TitleChoice, prompts.Value, prompts.shortlist_schema(5)]


@pytest.fixture(scope="module")
def llama(local_model_path):
    """The embedded model, loaded in-process once the probe passed (conftest)."""
    from nodes.llm.local import load_llama

    return load_llama(str(local_model_path), 4096, 1)[0]


def answer(llama, **kwargs) -> tuple[str, str]:
    """Return the answer's text and finish reason ("length" when cut at max_tokens)."""
    out = llama.create_chat_completion(messages=MESSAGES, max_tokens=120, seed=0, **kwargs)
    choice = out["choices"][0]
    return choice["message"]["content"], choice["finish_reason"]


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.__name__)
def test_greedy_answer_equals_full_grammar_masking(llama, schema) -> None:
    from nodes.llm.grammar import LazyGrammar

    json_schema = schema.model_json_schema()
    masked = answer(
        llama, temperature=0.0, response_format={"type": "json_object", "schema": json_schema}
    )
    lazy = LazyGrammar(llama, json_schema, temperature=0.0)
    try:
        checked = answer(llama, temperature=0.0, logits_processor=[lazy])
    finally:
        lazy.close()
    assert checked == masked
    if checked[1] == "stop":  # a tiny model may ramble until the token limit; both cut alike
        schema.model_validate_json(checked[0])
    assert lazy.checks >= 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampled_answers_follow_the_schema(llama, seed) -> None:
    from nodes.llm.grammar import LazyGrammar

    schema = prompts.shortlist_schema(4)
    lazy = LazyGrammar(llama, schema.model_json_schema(), temperature=0.8, seed=seed)
    try:
        text, finish = answer(llama, temperature=0.8, logits_processor=[lazy])
    finally:
        lazy.close()
    assert finish == "stop"
    assert schema.model_validate_json(text).choice in (1, 2, 3, 4)
