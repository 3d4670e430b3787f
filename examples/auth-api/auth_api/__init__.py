"""A small user-authentication API: register, log in, JWT access and refresh tokens.

Deliberately weak in places (see README.md): it is the example workspace the
Cadre reviewer and developer agents harden.
"""

from auth_api.app import AuthApp, create_app
from auth_api.config import Config, load_config

__all__ = ["AuthApp", "Config", "create_app", "load_config"]
