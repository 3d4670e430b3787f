"""Wiring only: `python -m services.researcher` runs one researcher agent instance."""

from shared.agent.runtime import build_agent
from shared.agent.settings import AgentSettings
from shared.bus.service import run_service

BRAINS = {
    "builtin": "services.researcher.builtin:BuiltinResearcher",
    "llm": "services.researcher.llm:LLMResearcher",
}

if __name__ == "__main__":
    run_service("researcher", AgentSettings, build_agent("researcher", BRAINS))
