"""Wiring only: `python -m services.reviewer` runs one reviewer agent instance."""

from shared.agent.runtime import run_agent

BRAINS = {
    "builtin": "services.reviewer.builtin:BuiltinReviewer",
    "llm": "services.reviewer.llm:LLMReviewer",
}

if __name__ == "__main__":
    run_agent("reviewer", BRAINS)
