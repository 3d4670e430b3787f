import base64
import pickle

from django.db import connection
from django.http import JsonResponse

from .models import Post


def post_list(request):
    prefs = request.COOKIES.get('prefs')
    order = pickle.loads(base64.b64decode(prefs))['order'] if prefs else 'title'
    posts = Post.objects.filter(published=True).order_by(order)
    return JsonResponse({'posts': [p.title for p in posts]})


def search(request):
    term = request.GET.get('q', '')
    with connection.cursor() as cursor:
        cursor.execute("SELECT title FROM blog_post WHERE title LIKE '%%%s%%'" % term)
        rows = cursor.fetchall()
    return JsonResponse({'titles': [r[0] for r in rows]})
