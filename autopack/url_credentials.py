"""Credentials inside URLs, found in one place for masking (logs, reports, stored rows) and redaction lists.

A URL carries a secret in three places, and each has leaked somewhere before:
- the password of ``user:password@`` (SQLAlchemy's ``hide_password`` covers only this one);
- a token used as the user name, the convention of HTTP(S) and git remotes (``https://<token>@host``);
- a query parameter (``postgresql://host/db?password=…``, which psycopg honours; ``…/v1?api_key=…``).
A plain user name of a database URL is kept: it says which account, not how to log in.

Where the userinfo ends is decided conservatively (``userinfo_end``): a raw ``@`` in a password
(``postgresql://u:p@ss@host/db``) makes tools disagree (SQLAlchemy stops at the first ``@``, ``urlsplit`` at
the last one of the authority), and a raw ``/`` before it (``u:p@ss/w@host``) hides it from the authority
altogether. Here the userinfo runs to the *last* ``@`` of the URL, so an ambiguous URL is masked too much,
never too little.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlsplit

MASK = "***"

#: Query parameters whose value is a credential (matched case-insensitively, ``-`` or ``_`` alike).
SECRET_PARAMETERS = (
    "password", "passwd", "pwd", "pass", "sslpassword", "secret", "client_secret", "token", "access_token",
    "refresh_token", "id_token", "auth", "authorization", "api_key", "apikey", "key", "sig", "signature",
    "x_amz_signature", "x_amz_security_token", "x_goog_signature", "code",
)
_SECRET_NAME = "|".join(
    re.escape(name).replace("_", "[-_]?") for name in sorted(SECRET_PARAMETERS, key=len, reverse=True)
)
_QUERY_SECRET = re.compile(rf"(?P<lead>[?&;](?:{_SECRET_NAME})=)(?P<value>[^&#;\s\"'<>]+)", re.IGNORECASE)
#: Schemes where a user name without a password is, by convention, a token.
TOKEN_USER_SCHEMES = ("http", "https", "ws", "wss", "git", "ssh")
_SCHEME = re.compile(r"\b(?P<name>[a-zA-Z][a-zA-Z0-9+.\-]*)://")
#: What follows ``scheme://`` up to the end of the URL (whitespace ends it).
_URL_REST = re.compile(r"\S*")
#: A user name kept when its password is masked (anything else in front of ``:`` is masked with it).
_PLAIN_USER = re.compile(r"[^:/?#@\s\"'<>]*")
_AUTHORITY_END = re.compile(r"[/?#]")
_QUOTE = re.compile(r"[\"'<>]")


def is_secret_parameter(name: str) -> bool:
    return name.strip().lower().replace("-", "_") in SECRET_PARAMETERS


def userinfo_end(rest: str) -> int:
    """Where the userinfo of a URL ends: the index of its closing ``@`` in ``rest`` (what follows
    ``scheme://``, up to whitespace), or -1 when the URL has none.

    There is one when the authority (up to the first ``/``, ``?`` or ``#``) holds an ``@``, or a ``:`` with an
    ``@`` further on (``u:pa/ss@host``: SQLAlchemy reads ``pa/ss`` as the password). It then runs to the
    *last* ``@`` before a quote or bracket: a raw ``@`` or ``/`` in the password cannot cut it short.
    A ``@`` past an authority with neither (``https://github.com/o/r@v1``) is part of the path.
    """
    delimiter = _AUTHORITY_END.search(rest)
    authority_end = delimiter.start() if delimiter else len(rest)
    authority = rest[:authority_end]
    if "@" not in authority and ":" not in authority:
        return -1
    quote = _QUOTE.search(rest, authority_end)
    return rest.rfind("@", 0, quote.start() if quote else len(rest))


def split_userinfo(url: str) -> tuple[str, str, str] | None:
    """``(scheme, userinfo, after)`` of ``url`` (``after`` starts at the ``@``), or None without a userinfo."""
    url = url.strip()
    match = _SCHEME.match(url)
    if match is None:
        return None
    rest = _URL_REST.match(url, match.end())[0]  # type: ignore[index]
    end = userinfo_end(rest)
    if end < 0:
        return None
    return match["name"], rest[:end], url[match.end() + end:]


def has_raw_at_in_userinfo(url: str) -> bool:
    """Whether the user name or password of ``url`` holds a raw ``@`` (more than one ``@`` in the URL, the
    last of them closing a userinfo): tools split such a URL differently, and drivers echo the pieces."""
    split = split_userinfo(url)
    return split is not None and "@" in split[1]


def _secret_part(scheme: str, userinfo: str) -> str | None:
    """The credential in ``userinfo``: the password; a token user name (HTTP(S), git, ssh); the whole of
    it when the user name is not a plain name (``to@ken:x``: where it ends is a guess)."""
    user, colon, password = userinfo.partition(":")
    if colon and _PLAIN_USER.fullmatch(user):
        return password
    if colon or "@" in userinfo or any(part in TOKEN_USER_SCHEMES for part in scheme.lower().split("+")):
        return userinfo
    return None  # a database user name: which account, not how to log in


def _fragments(secret: str) -> list[str]:
    """What follows each raw ``@`` or ``/`` of ``secret``: a driver that split the URL there echoes it
    (``failed to resolve host 'rest-of-password@host'``)."""
    return [secret[m.end():] for m in re.finditer(r"[@/]", secret)]


def url_credentials(url: str) -> list[str]:
    """Every secret value inside ``url`` (as written and percent-decoded, and the pieces of a password with
    a raw ``@`` or ``/``), for a redaction list."""
    found: list[str] = []
    split = split_userinfo(url)
    secret = _secret_part(*split[:2]) if split else None
    if secret:
        found.append(secret)
    try:
        query = urlsplit(url.strip()).query
    except ValueError:
        query = ""
    found += [value for name, value in parse_qsl(query, keep_blank_values=False) if is_secret_parameter(name)]
    decoded = [unquote(value) for value in found]
    fragments = _fragments(secret) if secret else []
    return list(dict.fromkeys(value for value in found + decoded + fragments if value))


def _mask_userinfo(text: str) -> str:
    """``text`` with the secret part of every URL's userinfo replaced by ``***``."""
    pieces: list[str] = []
    done = 0
    for match in _SCHEME.finditer(text):
        if match.start() < done:  # inside a userinfo already masked
            continue
        start = match.end()
        rest = _URL_REST.match(text, start)[0]  # type: ignore[index]
        end = userinfo_end(rest)
        if end < 0:
            continue
        userinfo = rest[:end]
        secret = _secret_part(match["name"], userinfo)
        if not secret or secret == MASK:
            continue
        kept = userinfo[: len(userinfo) - len(secret)]  # "user:" when only the password is masked
        pieces += [text[done:start], kept, MASK]
        done = start + end
    return "".join(pieces) + text[done:] if pieces else text


def mask_url_credentials(text: str) -> str:
    """``text`` with every URL credential it contains replaced by ``***`` (database user names kept)."""
    if "://" not in text and "=" not in text:
        return text
    text = _mask_userinfo(text)
    return _QUERY_SECRET.sub(lambda m: f"{m['lead']}{MASK}", text)
