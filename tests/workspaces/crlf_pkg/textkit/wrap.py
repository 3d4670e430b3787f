"""Wrapping."""
import textwrap


def wrap_text(text, width=72):
    return '\n'.join(textwrap.wrap(text, width=width))
