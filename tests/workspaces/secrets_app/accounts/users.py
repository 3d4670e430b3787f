"""User records (in memory)."""
from dataclasses import dataclass

USERS = {}


@dataclass
class User:
    username: str
    email: str
    password: str
    is_admin: bool = False


def create_user(username, email, password, is_admin=False):
    USERS[username] = User(username, email, password, is_admin)
    return USERS[username]
