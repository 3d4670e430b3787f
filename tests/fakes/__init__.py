"""Real local stand-ins for external services (an OpenAI-compatible chat server)."""

from tests.fakes.chat_server import ChatServer, Fail, Raw, Recorded, Reply

__all__ = ["ChatServer", "Fail", "Raw", "Recorded", "Reply"]
