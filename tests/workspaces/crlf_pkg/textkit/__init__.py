"""textkit: small text helpers (slugs, wrapping, settings)."""
from .slug import slugify, unique_slug
from textkit.wrap import wrap_text
from .config import load_settings

__version__ = '0.3.1'
