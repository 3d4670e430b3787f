"""Wiring only: `python -m services.reviewer` runs one reviewer agent instance."""

from shared.agent.runtime import build_agent
from shared.agent.settings import AgentSettings
from shared.bus.service import run_service

BRAINS = {
    "builtin": "services.reviewer.builtin:BuiltinReviewer",
    "llm": "services.reviewer.llm:LLMReviewer",
}

if __name__ == "__main__":
    run_service("reviewer", AgentSettings, build_agent("reviewer", BRAINS))
