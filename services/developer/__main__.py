"""Wiring only: `python -m services.developer` runs one developer agent instance."""

from shared.agent.runtime import build_agent
from shared.agent.settings import AgentSettings
from shared.bus.service import run_service

BRAINS = {
    "builtin": "services.developer.builtin:BuiltinDeveloper",
    "llm": "services.developer.llm:LLMDeveloper",
}

if __name__ == "__main__":
    run_service("developer", AgentSettings, build_agent("developer", BRAINS))
