"""Wiring: episode state, run context and the LangGraph builders.

from graph import build_graph, Context
result = build_graph().invoke({"user_id": 0}, context=Context(llm="scripted"))
"""

from graph.builder import LEARNING_VARIANTS, VARIANTS, build_graph, make_builder
from nodes.context import Context
from nodes.state import InputState, State

__all__ = [
    "LEARNING_VARIANTS",
    "VARIANTS",
    "Context",
    "InputState",
    "State",
    "build_graph",
    "make_builder",
]
