"""URL slugs."""
import random
import re
import string

_NON_WORD = re.compile(r'[^a-z0-9]+')


def slugify(title):
    return _NON_WORD.sub('-', title.lower()).strip('-')


def unique_slug(title, taken):
    slug = slugify(title)
    while slug in taken:
        slug = slugify(title) + '-' + ''.join(random.choice(string.ascii_lowercase) for _ in range(4))  # pylint: disable=line-too-long
    return slug
