from textkit import load_settings, slugify, unique_slug, wrap_text


def test_slugify():
    assert slugify('Hello, World!') == 'hello-world'


def test_unique_slug_avoids_taken():
    assert unique_slug('Hello', {'hello'}) != 'hello'


def test_wrap():
    assert wrap_text('a b c', width=3) == 'a b\nc'


def test_settings_merge_defaults(tmp_path):
    path = tmp_path / 's.yaml'
    path.write_text('lang: fr\n')
    assert load_settings(path) == {'width': 72, 'lang': 'fr'}
