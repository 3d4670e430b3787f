"""Admin console settings."""

SECRET_KEY = "admin-0a1b2c3d4e5f"
SESSION_MINUTES = 30
