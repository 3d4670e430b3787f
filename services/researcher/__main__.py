"""Wiring only: `python -m services.researcher` runs one researcher agent instance."""

from shared.agent.runtime import run_agent

BRAINS = {
    "builtin": "services.researcher.builtin:BuiltinResearcher",
    "llm": "services.researcher.llm:LLMResearcher",
}

if __name__ == "__main__":
    run_agent("researcher", BRAINS)
