"""Credentials inside URLs, found in one place for masking (logs, reports, stored rows) and redaction lists.

A URL carries a secret in three places, and each has leaked somewhere before:
- the password of ``user:password@`` (SQLAlchemy's ``hide_password`` covers only this one);
- a token used as the user name, the convention of HTTP(S) and git remotes (``https://<token>@host``);
- a query parameter (``postgresql://host/db?password=…``, which psycopg honours; ``…/v1?api_key=…``).
A plain user name of a database URL is kept: it says which account, not how to log in.
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
_TOKEN_USER = re.compile(
    rf"(?P<scheme>\b(?:{'|'.join(TOKEN_USER_SCHEMES)})://)(?P<user>[^:/@\s\"'<>]+)@", re.IGNORECASE
)
_USER_PASSWORD = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@")


def is_secret_parameter(name: str) -> bool:
    return name.strip().lower().replace("-", "_") in SECRET_PARAMETERS


def url_credentials(url: str) -> list[str]:
    """Every secret value inside ``url`` (as written and percent-decoded), for a redaction list."""
    try:
        parts = urlsplit(url.strip())
        username, password = parts.username, parts.password
    except ValueError:
        return []
    found: list[str] = []
    if password:
        found.append(password)
    scheme = parts.scheme.split("+", 1)[0].lower()
    if username and password is None and scheme in TOKEN_USER_SCHEMES:
        found.append(username)
    found += [value for name, value in parse_qsl(parts.query, keep_blank_values=False) if is_secret_parameter(name)]
    decoded = [unquote(value) for value in found]
    return list(dict.fromkeys(value for value in found + decoded if value))


def mask_url_credentials(text: str) -> str:
    """``text`` with every URL credential it contains replaced by ``***`` (database user names kept)."""
    if "://" not in text and "=" not in text:
        return text
    text = _USER_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    text = _TOKEN_USER.sub(lambda m: f"{m['scheme']}{MASK}@" if m["user"] != MASK else m[0], text)
    return _QUERY_SECRET.sub(lambda m: f"{m['lead']}{MASK}", text)
