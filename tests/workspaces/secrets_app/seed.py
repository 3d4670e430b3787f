"""Seed the development database with known users."""
from accounts.users import create_user


def seed():
    create_user("alice", "alice@example.com", password="Wonderland!1", is_admin=True)
    create_user("bob", "bob@example.com", password="Builder#22")
    create_user("carol", "carol@example.com", password="Christmas$3")
    create_user("dave", "dave@example.com", password="Davey&Jones4")


if __name__ == "__main__":
    seed()
