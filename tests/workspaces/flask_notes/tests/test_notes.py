def test_register_then_login(client):
    assert client.post('/register', json={'email': 'a@example.com', 'password': 'pw'}).status_code == 201
    assert client.post('/login', json={'email': 'a@example.com', 'password': 'pw'}).status_code == 200
    assert client.post('/login', json={'email': 'a@example.com', 'password': 'no'}).status_code == 401


def test_reset_token_is_stored(client):
    client.post('/register', json={'email': 'b@example.com', 'password': 'pw'})
    assert client.post('/reset', json={'email': 'b@example.com'}).get_json() == {'sent': True}


def test_search_finds_nothing_in_an_empty_database(client):
    assert client.get('/search?q=x').get_json() == []
