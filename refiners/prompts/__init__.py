"""Named meta-prompt templates, loaded once from templates.toml."""

from __future__ import annotations

import tomllib
from functools import cache
from importlib.resources import files
from string import Template


@cache
def _templates() -> dict[str, dict[str, str]]:
    text = files(__package__).joinpath("templates.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def template(name: str, part: str) -> str:
    """The raw text of `part` (system, user, cue) of the named template."""
    return _templates()[name][part]


def render(name: str, part: str, **values: str | int) -> str:
    """The template part with its $placeholders filled; a missing value is an error, not a blank."""
    return Template(template(name, part)).substitute({k: str(v) for k, v in values.items()})
