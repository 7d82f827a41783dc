"""The reference prompt rebuild: it grows with the scratchpad, is capped, and is sized right."""

from __future__ import annotations

import math

import pytest

from bench import reference_prompt as ref
from nodes import prompts


def chars(text: str) -> int:
    """A tokenizer stand-in (characters / 4) so the layout tests need no model file."""
    return math.ceil(len(text) / 4)


HISTORY = [f"Title {i}" for i in range(15)]


def steps(n: int, thought: str = "Change genre, keep to the user's taste.") -> list[ref.RefStep]:
    return [
        ref.RefStep(
            thought=thought,
            action=f"Pick {i}",
            title=f"Item {i}",
            rating=4.0,
            left=i == n - 1,
            explore=("Action", "Puzzle"),
        )
        for i in range(n)
    ]


def thought_tokens(n_steps: int, thought: str = "Change genre.") -> int:
    eps = steps(n_steps, thought)
    return chars(ref.step_prompts(HISTORY, [], eps, n_steps - 1, "steam", chars)[0][1])


def test_reference_prompt_grows_with_the_scratchpad():
    sizes = [thought_tokens(n) for n in (1, 5, 10, 20)]
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0] + 200


def test_scratchpad_is_capped_at_the_truncation_limit():
    long_thought = "A long plan about genres and variety. " * 20
    fixed = chars(ref.react_prompt(HISTORY, [], "", "steam", chars))
    prompt = ref.step_prompts(HISTORY, [], steps(50, long_thought), 49, "steam", chars)[0][1]
    assert "[truncated thought]" in prompt
    assert chars(prompt) <= fixed + ref.TRUNCATE_TOKENS + 10
    pad = "".join(ref.step_lines(k, s) for k, s in enumerate(steps(50, long_thought), 1))
    assert chars(ref.truncate(pad, chars)) <= ref.TRUNCATE_TOKENS


def test_truncate_stops_when_no_thought_is_left():
    pad = "\nAction 1: " + "x" * 40_000
    assert ref.truncate(pad, chars) == pad  # the reference would crash here; we send it as is


def test_each_step_makes_three_calls_and_action_carries_the_hints():
    eps = [ref.RefStep("t", "A", "B", 5.0, False, ("Action", "RPG"), ("Good",), (), True, 2.5)]
    calls = ref.step_prompts(HISTORY, ["lesson"], eps, 0, "amazon", chars)
    assert [r for r, _ in calls] == ["thought", "action", "critic"]
    assert "Action RPG" not in calls[0][1] and "Action and RPG" in calls[1][1]
    assert "Good" in calls[1][1] and "lesson" in calls[0][1]
    assert "the value is 2.5" in calls[2][1]
    assert "cannot be recommended" in ref.reflection_prompt(HISTORY, eps)


def test_our_prompt_does_not_carry_a_scratchpad_or_few_shots():
    """Ours re-renders one line per step; the reference adds a whole Thought/Action/Obs block."""
    ours = [
        chars(prompts.PLANNER_USER.format(history="h", episode="- x\n" * n, reflections="-"))
        for n in (1, 20)
    ]
    theirs = [
        thought_tokens(n, "Stay close to the user's taste but change genre.") for n in (1, 20)
    ]
    assert ours[1] - ours[0] < (theirs[1] - theirs[0]) / 2
    assert ours[0] < theirs[0] / 2


def test_our_blocks_match_the_reference_sizes():
    tokenizer = pytest.importorskip("bench.prompt_cost").Tokenizer
    try:
        count = tokenizer().count
    except (FileNotFoundError, ImportError) as exc:
        pytest.skip(f"no SmolLM2 tokenizer: {exc}")

    def bare(text: str) -> str:
        for name in ("examples", "trajs", "reflections", "question", "scratchpad"):
            text = text.replace("{" + name + "}", "")
        return text.replace("{history_list}", "").replace("{instruction}", "")

    ours = {
        "fewshot_two_episodes": count(ref.FEWSHOTS["two"]),
        "fewshot_one_episode": count(ref.FEWSHOTS["one"]),
        "fewshot_reflection": count(ref.FEWSHOT_REFLECTION),
        "react_instruction": count(bare(ref.REACT_INSTRUCTION)),
        "reflect_instruction": count(bare(ref.REFLECT_INSTRUCTION)),
        "critic_instruction": count(bare(ref.CRITIC_INSTRUCTION)),
        "reflection_header": count(ref.REFLECTION_HEADER),
    }
    for name, measured in ref.REFERENCE_TOKENS.items():
        assert abs(ours[name] - measured) <= max(4, 0.05 * measured), name
    assert sum(ours.values()) == pytest.approx(sum(ref.REFERENCE_TOKENS.values()), rel=0.03)
