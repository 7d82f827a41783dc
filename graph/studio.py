"""The compiled graphs that `langgraph.json` names for LangGraph Studio (`langgraph dev`).

Compiled without a checkpointer: the LangGraph server brings its own persistence.
"""

from graph.builder import build_graph

billp = build_graph("billp")
billp_nomacro = build_graph("billp-nomacro")
billp_nomicro = build_graph("billp-nomicro")
reflexion = build_graph("reflexion")
react = build_graph("react")
actonly = build_graph("actonly")
