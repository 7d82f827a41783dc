"""The agents: planner, actor, grounding, user (simulator), critic, reflector, and LLM backends."""
