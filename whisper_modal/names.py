"""Unknown keyword names: one check, with "did you mean" for a typo.

Every place that takes names from a caller (``transcribe(**kwargs)``, ``Settings``,
``TranscribeOptions`` and their ``replace``) refuses an unknown one with a
``ConfigurationError`` that suggests the close known names (``difflib``) or, when nothing
is close, lists what is accepted.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from whisper_modal.errors import ConfigurationError

__all__ = ["check_names", "checked_keywords"]

C = TypeVar("C", bound=type)

#: close aliases that difflib does not find but users type (``lang`` for ``language``)
ALIASES = {"lang": "language", "speakers": "num_speakers", "words": "word_timestamps"}


def check_names(kind: str, given: Iterable[str], known: Iterable[str]) -> None:
    """Raise ``ConfigurationError`` naming each of ``given`` that is not in ``known``.

    Args:
        kind: what the names are, for the message ("argument", "setting", "option").
        given: the caller's names. known: the accepted ones.
    """
    accepted = sorted(set(known))
    unknown = sorted(set(given) - set(accepted))
    if not unknown:
        return
    parts = []
    for name in unknown:
        alias = ALIASES.get(name)
        close = [alias] if alias in accepted else difflib.get_close_matches(name, accepted, 3)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        parts.append(f"{name!r}{hint}")
    message = f"unknown {kind}{'s' if len(unknown) > 1 else ''}: {', '.join(parts)}"
    if not any("did you mean" in p for p in parts):
        message += f"; accepted: {', '.join(accepted)}"
    raise ConfigurationError(message)


def checked_keywords(kind: str) -> Callable[[C], C]:
    """Class decorator: the (attrs) ``__init__`` refuses unknown keywords via ``check_names``.

    Apply it above ``@attrs.frozen``. The generated signature stays what type checkers and
    ``inspect.signature`` see; only an unknown keyword, which would have been a bare
    ``TypeError``, becomes a ``ConfigurationError`` with a suggestion.
    """

    def decorate(cls: C) -> C:
        init: Callable[..., None] = cls.__dict__["__init__"]
        known = [a.alias for a in cls.__attrs_attrs__ if a.init]  # type: ignore[attr-defined]

        @functools.wraps(init)
        def checked(self: Any, *args: Any, **kwargs: Any) -> None:
            check_names(kind, kwargs, known)
            init(self, *args, **kwargs)

        cls.__init__ = checked  # type: ignore[misc]
        return cls

    return decorate
