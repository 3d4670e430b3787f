"""Wiring only: `python -m services.developer` runs one developer agent instance."""

from shared.agent.runtime import run_agent

BRAINS = {
    "builtin": "services.developer.builtin:BuiltinDeveloper",
    "llm": "services.developer.llm:LLMDeveloper",
}

if __name__ == "__main__":
    run_agent("developer", BRAINS)
