"""The documented extension points: insert or replace an agent node without editing the package."""

from __future__ import annotations

import pytest

from graph import Context, build_graph


@pytest.fixture
def context(tmp_path):
    return Context(
        dataset="synthetic", llm="scripted", embeddings="hashing", memory_dir=str(tmp_path / "m")
    )


def test_insert_an_explainer_after_the_actor(context):
    # The README example, verbatim in spirit: a node that annotates the pending step.
    async def explainer(state, runtime):
        step = state["pending"]
        return {"pending": {**step, "explanation": f"{step['title']} fits the plan"}}

    graph = build_graph(insert_after={"actor": ("explainer", explainer)})
    result = graph.invoke({"user_id": 0}, context=context)
    assert all(s["explanation"] == f"{s['title']} fits the plan" for s in result["steps"])
    assert "explainer" in graph.get_graph().nodes


def test_replace_the_critic(context):
    async def constant_critic(state, runtime):
        step = {**state["pending"], "value": 1.0, "advantage": 0.0}
        return {"steps": [step], "pending": {}, "value": 1.0}

    result = build_graph(replace={"critic": constant_critic}).invoke(
        {"user_id": 1}, context=context
    )
    assert [s["value"] for s in result["steps"]] == [1.0] * len(result["steps"])
    assert result["done"]


def test_bad_extension_names_fail_early():
    with pytest.raises(ValueError, match="cannot replace"):
        build_graph("react", replace={"critic": lambda s, r: {}})
    with pytest.raises(ValueError, match="already used"):
        build_graph(insert_after={"actor": ("user", lambda s, r: {})})
