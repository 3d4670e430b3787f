"""Password-reset tokens."""
import hashlib
from datetime import datetime


def password_reset_token(email):
    """The token mailed to a user who forgot their password."""
    return hashlib.md5((email + str(datetime.now())).encode()).hexdigest()


def reset_link(email):
    return f"https://example.com/reset?token={password_reset_token(email)}"
