from accounts.tokens import password_reset_token, reset_link


def test_reset_token_is_32_hex_characters():
    token = password_reset_token("a@example.com")
    assert len(token) == 32 and int(token, 16) >= 0


def test_reset_link_carries_a_token():
    assert reset_link("a@example.com").startswith("https://example.com/reset?token=")
