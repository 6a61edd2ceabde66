"""Keep secrets out of published reports.

The run store should hold none, but device strings, argv and messages are free text: a
value under a key that names a secret (password, token, api key, private key, ...) is
replaced, and so is ``name=value`` / ``name: value`` text and a PEM private-key block.
"""

from __future__ import annotations

import re
from typing import Any, Final

REDACTED: Final = "[redacted]"

_SECRET_NAME: Final = (
    r"pass(?:word|wd|phrase)?|secret|token|api[_-]?key|access[_-]?key|private[_-]?key"
    r"|client[_-]?secret|credentials?|auth(?:orization)?|bearer|session[_-]?id|cookie"
)
_SECRET_KEY_RE: Final = re.compile(rf"(?:^|[_.\-])(?:{_SECRET_NAME})(?:$|[_.\-])", re.I)
_ASSIGNMENT_RE: Final = re.compile(
    rf"(?P<name>(?:-{{1,2}}|\b)[\w.\-]*?(?:{_SECRET_NAME})[\w\-]*)(?P<sep>\"?\s*[=:]\s*\"?|\s+)"
    r"(?P<value>[^\s\"',;&]+)",
    re.I,
)
_PEM_RE: Final = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)", re.S
)
_BEARER_RE: Final = re.compile(r"\b(?P<scheme>bearer)\s+[A-Za-z0-9._~+/=\-]+", re.I)
_URL_CREDENTIALS_RE: Final = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.\-]*://)[^/\s:@]+:[^/\s@]+@")


def is_secret_key(key: str) -> bool:
    """Whether a mapping key names a secret (``password``, ``api_key``, ``x-auth-token``)."""
    return _SECRET_KEY_RE.search(key.lower()) is not None


def redact_text(text: str) -> str:
    """``text`` with secret assignments, credentials in URLs and private keys replaced."""
    text = _PEM_RE.sub(REDACTED, text)
    text = _BEARER_RE.sub(lambda m: f"{m['scheme']} {REDACTED}", text)
    text = _URL_CREDENTIALS_RE.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)

    def assignment(match: re.Match[str]) -> str:
        if match["sep"].strip() == "" and not match["name"].startswith("-"):
            return match[0]  # "token bucket" is prose; "--password hunter2" is a flag
        return f"{match['name']}{match['sep']}{REDACTED}"

    return _ASSIGNMENT_RE.sub(assignment, text)


def redact(value: Any) -> Any:
    """A deep copy of a JSON-like value with secrets replaced (see the module docstring)."""
    if isinstance(value, dict):
        return {
            key: REDACTED if isinstance(key, str) and is_secret_key(key) else redact(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        items = [redact(item) for item in value]
        # argv: a secret-named flag hides the value that follows it
        for i in range(1, len(items)):
            before = value[i - 1]
            flag = isinstance(before, str) and before.startswith("-") and "=" not in before
            if flag and is_secret_key(str(before).lstrip("-")):
                items[i] = REDACTED
        return items
    if isinstance(value, str):
        return redact_text(value)
    return value
