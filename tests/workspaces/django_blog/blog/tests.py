from django.test import TestCase

from .models import Post


class PostListTests(TestCase):
    def setUp(self):
        Post.objects.create(title='Hello', body='first', published=True)
        Post.objects.create(title='Draft', body='later', published=False)

    def test_only_published_posts_are_listed(self):
        response = self.client.get('/posts/')
        self.assertEqual(response.json(), {'posts': ['Hello']})

    def test_search_matches_titles(self):
        response = self.client.get('/search/?q=Hel')
        self.assertEqual(response.json(), {'titles': ['Hello']})
