"""One redaction for every text that leaves the process: messages, MLflow params, tags and artifacts, the
checkpoint's config, sidecar files, the command lines and stage output the flows log.

A URL may carry secrets in its user information (``user:password@``) and its query string (signed URLs:
``X-Amz-Signature=...``, ``token=...``). :func:`redact_text` removes them three ways, because a secret
does not always arrive inside a well-formed URL:

1. every ``scheme://...`` URL is parsed with ``urlsplit`` and rebuilt without user information, query or
   fragment (whatever characters its path holds, parentheses included);
2. a query without a scheme before it (requests' errors quote ``/path?X-Amz-Signature=...`` alone) is
   dropped from the ``?`` on;
3. the exact secret values this process knows (the query string of the configured source, its long or
   secret-named values, a tracking URI's password: :func:`remember_secrets`) are replaced wherever they
   appear, whatever surrounds them.

The secret itself stays only in the setting or environment variable that holds it.

The URL forms salgan acts on are recognised here too, once: S3 locations (:func:`is_s3_url`,
:func:`parse_s3_url`, and the strict :data:`S3_LOCATION` a flow parameter must match) and registry URIs
(:data:`REGISTRY_URI`).
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from urllib.parse import unquote, unquote_plus, urlsplit, urlunsplit

from salgan.errors import InputError

S3_SCHEME = "s3://"
# s3://bucket/prefix as an untrusted parameter may name it: S3's bucket naming rules, a key of safe characters.
S3_LOCATION = re.compile(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[A-Za-z0-9._/-]*)?")
# models:/NAME@ALIAS or models:/NAME/VERSION of the registry; a name that is safe as a folder name (the model
# cache keeps versions by name: ".." must not steer a path) and an alias as MLflow allows them.
REGISTRY_URI = re.compile(
    r"models:/(?P<name>[A-Za-z0-9_-][A-Za-z0-9_.-]*)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>\d+))"
)
REDACTED = "(redacted)"
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
# A query string on its own: "?" then name=value, up to whitespace or a quote.
_BARE_QUERY = re.compile(r"\?[A-Za-z0-9_.~%+-]+=[^\s'\"<>]*")
# Shorter query values (X-Amz-Expires=600, a flag) are no secret, and replacing them everywhere would
# mangle ordinary text; signatures, tokens and credentials are far longer.
MIN_SECRET_CHARS = 8
_secrets: set[str] = set()
_lock = threading.Lock()


def is_s3_url(text: str | Path) -> bool:
    """Whether ``text`` names an S3 location (``s3://bucket/prefix``) rather than a local path."""
    return str(text).startswith(S3_SCHEME)


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")`` (prefix without slashes at its ends)."""
    match = re.fullmatch(r"s3://([^/]+)/?(.*)", url)
    if not match:
        raise InputError(f"{redact_url(url)}: not an s3://bucket/prefix URL")
    return match.group(1), match.group(2).strip("/")


def redact_url(url: str) -> str:
    """``url`` without user information, query string or fragment; text that is not a URL is unchanged."""
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # an unparsable netloc: keep only what cannot hold a secret
        return url.split("://", 1)[0] + "://" + REDACTED
    if not (parts.username or parts.password or parts.query or parts.fragment):
        return url
    netloc = (parts.hostname or "") + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def redact_text(text: str) -> str:
    """``text`` with every known secret, every URL's secrets and every bare query string removed."""
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)  # the longest first: a value inside the query string
    for secret in known:
        text = text.replace(secret, REDACTED)
    text = _URL.sub(lambda match: _redact_match(match.group(0)), text)
    return _BARE_QUERY.sub("", text)


def _redact_match(found: str) -> str:
    """A URL found in prose: the punctuation after it, and a closing parenthesis that opened before it, are
    the prose's, kept outside."""
    tail = ""
    while found[-1] in ".,;:!" or (found.endswith(")") and found.count(")") > found.count("(")):
        found, tail = found[:-1], found[-1] + tail
    return redact_url(found) + tail


def remember_secrets(url: str | None) -> None:
    """Redact the secrets of ``url`` (a setting this process uses) from every later text: its whole query
    string and fragment, its password, and each query value of at least :data:`MIN_SECRET_CHARS`
    characters, as written and %-decoded."""
    if not url or "://" not in url:
        return
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return
    found = [text for text in (parts.query, parts.fragment) if len(text) >= MIN_SECRET_CHARS]
    found += [password] if password and len(password) >= 4 else []
    for pair in re.split(r"[&;]", parts.query):
        raw = pair.partition("=")[2]
        if len(unquote_plus(raw)) >= MIN_SECRET_CHARS:
            found.append(raw)  # as written, still %-encoded
    candidates = {form for value in found for form in (value, unquote(value), unquote_plus(value))}
    with _lock:
        _secrets.update(value for value in candidates if value.strip())


def forget_secrets() -> None:
    """Drop every remembered secret (tests; a long-lived process that changed its source)."""
    with _lock:
        _secrets.clear()


class RedactingFilter(logging.Filter):
    """A logging filter that passes every record through :func:`redact_text` (its arguments formatted in)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact_text(record.getMessage()), ()
        return True
