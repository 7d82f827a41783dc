"""Chat-model backends: plumbing, not agents.

`calls` (the error and retry policy every node's LLM call goes through), `factory` (models
from spec strings),
`local` (the embedded llama.cpp model) with `grammar` (JSON-schema sampling token by token),
`openai_chat` + `modes` + `health` (any OpenAI-compatible endpoint: structured-output
negotiation, fail-fast), `structured` (one pydantic validation for every backend), `usage`
(token and call accounting), `cache` (the on-disk answer cache a Context names), `scripted`
(the deterministic test double) with `schema_values` (the simplest, or a random, value a JSON
Schema accepts), and `fake_server` + `fake_faults` (a fault-injecting OpenAI-compatible server
for reliability tests and benchmarks).
"""
