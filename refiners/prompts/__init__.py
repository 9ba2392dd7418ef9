"""Named meta-prompt templates, loaded once from templates.toml."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from functools import cache
from importlib.resources import files
from string import Template

from refiners.backend import ChatMessage
from refiners.fence import Fence


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


def meta_messages(
    name: str, fence: Fence, fenced: Mapping[str, str], **values: str | int
) -> tuple[ChatMessage, ChatMessage]:
    """The system and user messages of a meta-prompt; each `fenced[key]` fills `$key_fenced`, wrapped."""
    wrapped = {f"{key}_fenced": fence.wrap(text) for key, text in fenced.items()}
    user = render(name, "user", boundary=fence.boundary, **wrapped, **values)
    return ChatMessage("system", template(name, "system")), ChatMessage("user", user)
