"""Database connection settings."""

DB_HOST = "localhost"
DB_USER = "app"
DB_PASSWORD = "s3cr3t-db-pass"


def dsn():
    return f"postgresql://{DB_USER}:{DB_PASSWORD}@{DB_HOST}/app"
