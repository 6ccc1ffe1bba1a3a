"""Secrets and PII: find e-mail addresses, IP addresses, credentials in known formats and high-entropy
values assigned to secret-named variables, and replace each with a placeholder naming its kind.

Kinds and placeholders (the default `placeholder="<{KIND}>"` upper-cases the kind):

    private_key        -----BEGIN ... PRIVATE KEY----- block through its END line     <PRIVATE_KEY>
    jwt                three base64url segments, the header JSON with an "alg" field     <JWT>
    aws_access_key     AKIA/ASIA + 16 upper-case letters and digits                      <AWS_ACCESS_KEY>
    aws_secret_key     40 base64 characters assigned to an aws/secret-access-key name    <AWS_SECRET_KEY>
    github_token       ghp_/gho_/ghu_/ghs_/ghr_ + 36, github_pat_ + 22 + _ + 59          <GITHUB_TOKEN>
    slack_token        xoxa-/xoxb-/xoxp-/xoxr-/xoxs- with numeric segments               <SLACK_TOKEN>
    slack_webhook      https://hooks.slack.com/services/T.../B.../...                    <SLACK_WEBHOOK>
    google_api_key     AIza + 35                                                         <GOOGLE_API_KEY>
    stripe_key         sk_live_/rk_live_ (test-mode keys are left alone)                 <STRIPE_KEY>
    openai_key         sk-...T3BlbkFJ... (project/service-account forms), legacy sk- + 48 <OPENAI_KEY>
    anthropic_key      sk-ant-api03-...                                                  <ANTHROPIC_KEY>
    huggingface_token  hf_ + 34                                                          <HUGGINGFACE_TOKEN>
    email              local@domain.tld                                                  <EMAIL>
    ip_address         globally routable IPv4 and IPv6 addresses                         <IP_ADDRESS>
    secret             high-entropy string assigned to a secret-named variable or key    <SECRET>

Only the secret is replaced: `API_KEY = "..."` becomes `API_KEY = "<SECRET>"`, name and quotes kept.

What is deliberately kept (the false-positive guards):

- e-mail at domains reserved for documentation (example.com/.net/.org and their subdomains, any .example/
  .test/.invalid/.localhost name: RFC 2606/6761) and the non-personal local parts noreply, no-reply,
  donotreply, do-not-reply and git (`git@github.com:org/repo` is an SSH URL). Every other address is
  redacted, mailing lists and role addresses included: a list cannot be told from a person, and losing
  `python-dev@python.org` costs a code model nothing. So that `y = x@self.weight` (a matrix product) is not
  an address, the top-level domain must be two letters (a country) or one of 49 common generic ones.
- IP addresses that are not globally routable (private, loopback, link-local, site-local, documentation,
  shared, reserved, multicast, 0.0.0.0), the well-known public DNS resolvers (8.8.8.8, 1.1.1.1, ...),
  dotted quads inside longer dotted runs (OIDs `1.3.6.1.4.1`, `11.5.9.0.sb1`, `v1.2.3.4`), dotted quads of
  single digits only (`1.2.3.4`, `7.4.7.1`, `1.0.0.0`: versions and section numbers far more often than
  hosts), and dotted quads that follow version/release/build/ver/rev, ObjectIdentifier/oid or section/
  chapter/see within 40 characters on their line (`__version__ = "10.2.0.41"`,
  `ObjectIdentifier('2.5.29.30')`).
- placeholders in credential-shaped values: anything containing example/sample/dummy/placeholder/your/
  changeme/redacted/fake/xxxx/***/..., six equal characters in a row, 12345678 or abcdefgh, or template
  syntax (`${X}`, `$X`, `%(x)s`, `%s`, `{x}`, `<x>`). AWS's documentation key `AKIAIOSFODNN7EXAMPLE` stays.
- hex digests, UUIDs and base64 blobs unless assigned to a secret-named variable: no detector judges a bare
  string by its shape alone. A name that also carries hash/digest/checksum/sha/md5/url/path/file/name/
  type/... (`password_hash`, `token_url`, `eos_token`, `PasswordLastUsed`) is not secret-named; a secret
  word must end its word (`tokenizer`, `secrets` are not secret words; `apiKey`, `SECRET_KEY` are). A value
  that is itself a name (an identifier or dotted path without digits, `"RobertaTokenizer"`,
  `"DistributionList.NextMarker"`), a path, a URL, an ARN or a date is not a secret.
- a `-----BEGIN RSA PRIVATE KEY-----` marker with no key body after it (a PEM parser's constant).

Limits: regular expressions and heuristics, not a classifier. Personal names, phone numbers and street
addresses are not looked for; passwords shorter than `min_secret_length` or below the entropy threshold,
secrets split across string concatenations or written with escapes, random values made only of letters
(they read as names; 6% of 16-character base62 draws, 0.4% of 32-character ones), and credential formats not
listed above are missed. Values that merely sit under a secret-like key are redacted too: pagination
tokens, UUID change tokens and schema hashes in AWS examples (about 370 such values in 433 MB of stdlib and
site-packages text).

Speed: every pattern is tried only where its literal anchor (`AKIA`, `@`, `.d.d.`, `:h:`, `token`, ...)
occurs, found with `str.find` or a literal-first regex, and every pattern is bounded, so a scan is linear
in the text: 28-37 MB/s on one core of a shared machine over the standard library and site-packages
(433 MB), and under a second for each of the 1 MB adversarial lines in tests/data/test_secrets.py
(`a@a@a@...` is the slowest).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import ipaddress
import json
import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from codefoundry.data.document import Document

__all__ = [
    "KINDS",
    "Finding",
    "SecretsConfig",
    "find_secrets",
    "redact",
    "redact_document",
    "shannon_entropy",
]

KINDS: tuple[str, ...] = (
    "private_key",
    "jwt",
    "aws_access_key",
    "aws_secret_key",
    "github_token",
    "slack_token",
    "slack_webhook",
    "google_api_key",
    "stripe_key",
    "openai_key",
    "anthropic_key",
    "huggingface_token",
    "email",
    "ip_address",
    "secret",
)


@dataclass(frozen=True)
class SecretsConfig:
    """Which kinds to look for, and how strict the generic `secret` detector is.

    `entropy_threshold` is Shannon entropy in bits per character of an assigned value: random base62 of 16
    characters scores 3.77 on average (0.7% of draws fall under 3.3), `correcthorsebatterystaple` 3.36,
    `hunter2hunter2hunter2` 2.81, `aaaabbbbccccdddd` 2.0. Values shorter than `min_secret_length` are never
    secrets. `placeholder` is formatted with KIND (the kind upper-cased) and kind."""

    kinds: tuple[str, ...] = KINDS
    entropy_threshold: float = 3.3
    min_secret_length: int = 16
    placeholder: str = "<{KIND}>"

    def __post_init__(self) -> None:
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown:
            raise ValueError(
                f"SecretsConfig.kinds: unknown kind(s) {', '.join(unknown)}; known: {', '.join(KINDS)}"
            )

    def placeholder_for(self, kind: str) -> str:
        return self.placeholder.format(KIND=kind.upper(), kind=kind)


@dataclass(frozen=True)
class Finding:
    """One secret: its kind and the half-open character span [start, end) it occupies in the text."""

    kind: str
    start: int
    end: int


def shannon_entropy(value: str) -> float:
    """Bits per character of the character distribution of `value` (0.0 for an empty string)."""
    if not value:
        return 0.0
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


def _words(s: str) -> frozenset[str]:
    return frozenset(s.split())


_IDENT = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_B64URL = _IDENT | {"-"}


def _anchored(
    text: str, needle: str, pattern: re.Pattern[str], left: frozenset[str]
) -> Iterator[re.Match[str]]:
    """Matches of `pattern` (which starts with `needle`) at occurrences of `needle` not glued on their left to
    a character of `left`. Python's regex engine tries a pattern at every position unless it starts with a
    literal, and a left-boundary lookbehind defeats that; `str.find` jumps between needles at memchr speed,
    and a needle inside a run (`eyJeyJeyJ...`) is skipped in O(1) instead of re-scanning the run."""
    p = text.find(needle)
    while p != -1:
        m = pattern.match(text, p) if p == 0 or text[p - 1] not in left else None
        if m:
            yield m
        p = text.find(needle, m.end() if m else p + 1)


# --- credentials in known formats ---------------------------------------------------------------------------

# Each kind: the pattern (it starts with one of the needles), the needles, and the characters that may not
# precede a needle (a token glued to an identifier, `xAKIA...` or `my_ghp_...`, is part of another word).
_TOKEN_KINDS: dict[str, tuple[str, tuple[str, ...], frozenset[str]]] = {
    "aws_access_key": (r"(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])", ("AKIA", "ASIA"), _IDENT),
    "github_token": (
        r"gh[pousr]_[A-Za-z0-9]{36}(?![A-Za-z0-9_])|github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59}(?![\w])",
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
        _IDENT,
    ),
    "slack_token": (r"xox[abprs]-(?:[0-9]{1,16}-){1,3}[A-Za-z0-9]{16,64}(?![A-Za-z0-9-])", ("xox",), _B64URL),
    "slack_webhook": (
        r"https://hooks\.slack\.com/(?:services|workflows)/T[A-Z0-9]{8,12}/B[A-Z0-9]{8,12}/[A-Za-z0-9]{24}"
        r"(?![A-Za-z0-9])",
        ("https://hooks.slack.com/",),
        _IDENT,
    ),
    "google_api_key": (r"AIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])", ("AIza",), _B64URL),
    "stripe_key": (r"[sr]k_live_[0-9A-Za-z]{24,99}(?![0-9A-Za-z])", ("sk_live_", "rk_live_"), _IDENT),
    "openai_key": (
        r"sk-(?:[A-Za-z0-9_-]{20,200}T3BlbkFJ[A-Za-z0-9_-]{20,200}|[A-Za-z0-9]{48})(?![A-Za-z0-9_-])",
        ("sk-",),
        _B64URL,
    ),
    "anthropic_key": (
        r"sk-ant-(?:api|admin)[0-9]{2}-[A-Za-z0-9_-]{80,120}(?![A-Za-z0-9_-])",
        ("sk-ant-",),
        _B64URL,
    ),
    "huggingface_token": (r"hf_[A-Za-z0-9]{34}(?![A-Za-z0-9_])", ("hf_",), _IDENT),
}
_TOKENS: tuple[tuple[str, str, re.Pattern[str], frozenset[str]], ...] = tuple(
    (kind, needle, re.compile(pattern), left)
    for kind, (pattern, needles, left) in _TOKEN_KINDS.items()
    for needle in needles
)

# Words in a value that mark documentation placeholders and templates, not credentials.
_PLACEHOLDER = re.compile(
    r"(?i:example|sample|dummy|placeholder|your|change_?me|redacted|fake|xxxx|\*\*\*)"
    r"|(.)\1{5}|12345678|(?i:abcdefgh)|\.\.\.|…"
    r"|\$\{|\$\(|^\$[A-Za-z_]|%\(|%s|\{\{|\{[\w.]*\}|<[^<>]*>"
)


def _is_placeholder(value: str) -> bool:
    return _PLACEHOLDER.search(value) is not None


def _tokens(text: str, kinds: set[str]) -> Iterator[Finding]:
    for kind, needle, pattern, left in _TOKENS:
        if kind not in kinds or needle not in text:
            continue
        for m in _anchored(text, needle, pattern, left):
            # `sk-ant-...` also starts like an OpenAI key; the Anthropic entry claims it.
            if not _is_placeholder(m.group()) and not (
                kind == "openai_key" and m.group().startswith("sk-ant-")
            ):
                yield Finding(kind, m.start(), m.end())


# --- private keys and JWTs ----------------------------------------------------------------------------------

_PEM_BEGIN = re.compile(r"-----BEGIN (?:[A-Z0-9]+ ){0,4}PRIVATE KEY(?: BLOCK)?-----")
_PEM_END = re.compile(r"-----END (?:[A-Z0-9]+ ){0,4}PRIVATE KEY(?: BLOCK)?-----")
# What may sit between BEGIN and END: base64 lines, PEM headers (`Proc-Type: 4,ENCRYPTED`), and the quotes,
# commas and literal `\n`s of a key pasted into a string or a JSON value; not code.
_PEM_BODY = re.compile(r"[A-Za-z0-9+/=\s\\\"',:.-]*")
_PEM_BODY_MAX = 64 * 1024
_PEM_MIN_BASE64 = 64
# A key whose END line was cut off (a truncated file): the base64 lines that follow its BEGIN line.
_PEM_TAIL = re.compile(r"(?:[ \t]*(?:\r?\n|\\n)[ \t]*[A-Za-z0-9+/=]{16,})+")


def _count_base64(s: str) -> int:
    # A `\n` written as two characters inside a string literal adds an `n` that is not key material.
    return sum(ch.isalnum() or ch in "+/" for ch in s) - s.count("\\n")


def _private_keys(text: str) -> Iterator[Finding]:
    if "PRIVATE KEY" not in text:
        return
    # END positions once, then a binary search per BEGIN: linear even for a file of BEGIN lines only.
    ends = [(m.start(), m.end()) for m in _PEM_END.finditer(text)]
    end_starts = [s for s, _ in ends]
    pos = 0
    for begin in _PEM_BEGIN.finditer(text):
        if begin.start() < pos:
            continue
        i = bisect.bisect_left(end_starts, begin.end())
        if i < len(ends) and ends[i][0] - begin.end() <= _PEM_BODY_MAX:
            body = text[begin.end() : ends[i][0]]
            if _PEM_BODY.fullmatch(body) and _count_base64(body) >= _PEM_MIN_BASE64:
                pos = ends[i][1]
                yield Finding("private_key", begin.start(), pos)
                continue
        tail = _PEM_TAIL.match(text, begin.end())
        if tail and _count_base64(tail.group()) >= _PEM_MIN_BASE64:
            pos = tail.end()
            yield Finding("private_key", begin.start(), pos)


_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,2048}\.[A-Za-z0-9_-]{8,8192}\.[A-Za-z0-9_-]{0,2048}(?![A-Za-z0-9_-])")


def _jwt_header_ok(segment: str) -> bool:
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return False
    return isinstance(header, dict) and "alg" in header


def _jwts(text: str) -> Iterator[Finding]:
    for m in _anchored(text, "eyJ", _JWT, _B64URL):
        if _jwt_header_ok(m.group().split(".", 1)[0]):
            yield Finding("jwt", m.start(), m.end())


# --- e-mail and IP addresses --------------------------------------------------------------------------------

_LOCAL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%+-")
_DOMAIN = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,8}(?P<tld>[A-Za-z]{2,24})"
    r"(?![A-Za-z0-9_-]|\.[A-Za-z0-9])"
)
_GENERIC_TLDS = _words(
    "com org net edu gov mil int info biz name pro mobi aero coop museum jobs travel tel asia cat "
    "io ai app dev page cloud tech online site xyz email mail blog shop store design systems software "
    "network digital solutions services company consulting agency group team academy science"
)
_RESERVED_TLDS = _words("example test invalid localhost")
_EXAMPLE_DOMAINS = ("example.com", "example.net", "example.org")
_KEEP_LOCAL = _words("noreply no-reply donotreply do-not-reply git")


def _email_kept(local: str, domain: str, tld: str) -> bool:
    domain, tld = domain.lower(), tld.lower()
    if len(tld) != 2 and tld not in _GENERIC_TLDS:
        return True  # not an address: `x@self.weight`, `obj@module.attr`
    if tld in _RESERVED_TLDS or any(domain == d or domain.endswith("." + d) for d in _EXAMPLE_DOMAINS):
        return True
    return local.lower() in _KEEP_LOCAL


def _emails(text: str) -> Iterator[Finding]:
    at = text.find("@")
    while at != -1:
        # The local part is the whole run of local-part characters before `@` (at most 64, RFC 5321).
        start = at
        while start > 0 and at - start <= 64 and text[start - 1] in _LOCAL_CHARS:
            start -= 1
        domain = _DOMAIN.match(text, at + 1)
        local = text[start:at]
        ok = domain and local and at - start <= 64 and local[0].isalnum() and local[0].isascii()
        glued = start > 0 and text[start - 1] in _LOCAL_CHARS
        if ok and not glued and not _email_kept(local, domain.group(), domain.group("tld")):
            yield Finding("email", start, domain.end())
        at = text.find("@", domain.end() if ok else at + 1)


_IPV4_TRIGGER = re.compile(r"\.[0-9]{1,3}\.[0-9]{1,3}\.")
_IPV4 = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
_DOTTED_RUN = re.compile(r"[0-9.]+")
_IPV6_TRIGGER = re.compile(r":[0-9A-Fa-f]{0,4}:")
_HEX_COLON_RUN = re.compile(r"[0-9A-Fa-f:]+")
_NOT_IP_CONTEXT = re.compile(
    r"(?i:version|release|build|\bver\b|\brev\b|objectidentifier|\boid\b|section|chapter|\bsee\b)|\bv\W*$"
)
_PUBLIC_RESOLVERS = _words(
    "8.8.8.8 8.8.4.4 1.1.1.1 1.0.0.1 9.9.9.9 149.112.112.112 208.67.222.222 208.67.220.220 "
    "2001:4860:4860::8888 2001:4860:4860::8844 2606:4700:4700::1111 2606:4700:4700::1001"
)


def _is_public_ip(candidate: str) -> bool:
    try:
        addr = ipaddress.ip_address(candidate)
    except ValueError:
        return False
    if not addr.is_global or addr.is_reserved or addr.is_multicast or getattr(addr, "is_site_local", False):
        return False
    return str(addr) not in _PUBLIC_RESOLVERS


def _runs(text: str, trigger: re.Pattern[str], run: re.Pattern[str], chars: str) -> Iterator[tuple[int, int]]:
    """Maximal runs of `chars` that contain a match of `trigger`, each once (linear: each run is walked
    twice)."""
    done = 0
    for t in trigger.finditer(text):
        if t.start() < done:
            continue
        start = t.start()
        while start > done and text[start - 1] in chars:
            start -= 1
        done = run.match(text, start).end()  # type: ignore[union-attr]  # text[start] is in chars
        yield start, done


def _ips(text: str) -> Iterator[Finding]:
    for start, end in _runs(text, _IPV4_TRIGGER, _DOTTED_RUN, "0123456789."):
        if text[end - 1] == "." and end < len(text) and (text[end].isalnum() or text[end] == "_"):
            continue  # `11.5.9.0.sb1`: a dotted name, not a sentence-ending full stop
        end -= text[end - 1] == "."
        glued = (start > 0 and text[start - 1] in _IDENT) or (end < len(text) and text[end] in _IDENT)
        if glued or not _IPV4.fullmatch(text, start, end) or not _is_public_ip(text[start:end]):
            continue
        if all(len(octet) == 1 for octet in text[start:end].split(".")):
            continue  # 1.2.3.4, 7.4.7.1, 1.0.0.0: versions and section numbers far more often than hosts
        line_start = text.rfind("\n", 0, start) + 1
        if not _NOT_IP_CONTEXT.search(text, max(line_start, start - 40), start):
            yield Finding("ip_address", start, end)
    if "::" not in text and text.count(":") < 7:
        return
    for start, end in _runs(text, _IPV6_TRIGGER, _HEX_COLON_RUN, "0123456789abcdefABCDEF:"):
        glued = (start > 0 and (text[start - 1] in _IDENT or text[start - 1] == ".")) or (
            end < len(text) and (text[end] in _IDENT or text[end] == ".")
        )
        if not glued and end - start <= 39 and _is_public_ip(text[start:end]):
            yield Finding("ip_address", start, end)


# --- high-entropy values in secret-named assignments --------------------------------------------------------

# Secret names are found from four needles in the lower-cased text; `key` counts only after a qualifier.
_SECRET_NEEDLES = ("pass", "secret", "token", "key")
_PASS_WORD = re.compile(r"pass(?:word|wd|phrase)")
_KEY_QUALIFIER = re.compile(r"(?:api|access|auth|private|signing|encryption|client)[_-]?\Z")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
_NAME_MAX = 64
_NAME_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+")
# A name with one of these words holds something about a secret, not the secret itself.
_NOT_SECRET_WORDS = _words(
    "hash hashed hashes digest checksum sha sha1 sha256 sha512 md5 crc fingerprint etag integrity "
    "url uri endpoint host path file filename dir name names type kind header field prefix suffix env var "
    "len length size count max min id ids format pattern regex template label prompt placeholder "
    "expires expiry expiration ttl timeout date time last used created updated mode policy scope algorithm "
    "class cls validator reset confirm hint bos eos pad unk mask sep special start end begin stop"
)
# After the name: an optional closing quote/bracket (`cfg["api_key"] =`), an optional annotation, one of
# = := => :, then a quoted value without spaces or escapes, or a bare value as in .env/YAML/INI files.
_ASSIGNED = re.compile(
    r"[\"']?\]?\s{0,8}(?:(?::\s{0,8}[A-Za-z_][\w\[\]., |]{0,40}?\s{0,8})?:?=(?!=)|=>|:)\s{0,8}"
    r"(?:[rRbBuU]{0,2}(?P<q>[\"'`])(?:(?:Bearer|Basic|Token) )?(?P<quoted>[^\"'`\s\\]{1,512})(?P=q)"
    r"|(?P<bare>[A-Za-z0-9+/_~.-]{1,512}={0,2})(?=[\s,;#)}\]]|$))"
)
_NAME_LIKE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_NOT_A_VALUE = re.compile(r"://|^[./~]|/[\w-]+\.[A-Za-z]{1,5}$|^[0-9]{4}-[0-9]{2}-[0-9]{2}|^arn:")
_AWS_SECRET_VALUE = re.compile(r"[A-Za-z0-9/+]{40}")


def _secret_words(text: str) -> list[tuple[int, int]]:
    """Spans of the secret words, sorted; `_runs_on` decides where a word must end."""
    lowered = text.lower()
    if len(lowered) != len(text):  # a few non-ASCII letters lower-case to two characters
        lowered = text.translate(_ASCII_LOWER)
    spans = []
    for needle in _SECRET_NEEDLES:
        p = lowered.find(needle)
        while p != -1:
            start, end = p, p + len(needle)
            if needle == "pass":
                m = _PASS_WORD.match(lowered, p)
                end = m.end() if m else -1
            elif needle == "key":
                q = _KEY_QUALIFIER.search(lowered, max(0, p - 11), p)
                start = q.start() if q else -1
            if start >= 0 and end >= 0 and not _runs_on(text, end):
                spans.append((start, end))
            p = lowered.find(needle, p + 1)
    return sorted(spans)


def _runs_on(text: str, end: int) -> bool:
    """Does the word ending at `end` run on into a longer word: a letter of the same case follows
    (`tokenizer`, `TOKENIZER`, `secrets`), unlike camelCase (`apiKey`) or a separator (`SECRET_KEY`)."""
    if end >= len(text) or not text[end].isalpha():
        return False
    return text[end].isupper() == text[end - 1].isupper()


def _is_secret_name(name: str) -> bool:
    return not any(w.lower() in _NOT_SECRET_WORDS for w in _NAME_WORD.findall(name))


def _is_secret_value(value: str, *, bare: bool, config: SecretsConfig) -> bool:
    if len(value) < config.min_secret_length or _is_placeholder(value) or _NOT_A_VALUE.search(value):
        return False
    # A value that is itself a name is code or configuration: `"RobertaTokenizer"`, `"module.attr"`, or a
    # bare `db_name_2` (digits allowed only when bare, so a quoted random key with a digit survives).
    digits = any(map(str.isdigit, value))
    if _NAME_LIKE.fullmatch(value) and (not digits or (bare and ("_" in value or "." in value))):
        return False
    return shannon_entropy(value) >= config.entropy_threshold


def _assigned_secrets(text: str, config: SecretsConfig) -> Iterator[Finding]:
    covered = -1  # end of the last name examined: `secret_token` is one name, not two
    for word_start, word_end in _secret_words(text):
        if word_start < covered:
            continue
        start, end = word_start, word_end
        while start > 0 and word_start - start < _NAME_MAX and text[start - 1] in _NAME_CHARS:
            start -= 1
        while end < len(text) and end - word_end < _NAME_MAX and text[end] in _NAME_CHARS:
            end += 1
        covered = end
        name = text[start:end]
        if not _is_secret_name(name) or not (m := _ASSIGNED.match(text, end)):
            continue
        group = "quoted" if m.group("quoted") is not None else "bare"
        value = m.group(group)
        if _is_secret_value(value, bare=group == "bare", config=config):
            lowered = name.lower().replace("_", "").replace("-", "")
            aws = ("aws" in lowered and "secret" in lowered) or "secretaccesskey" in lowered
            kind = "aws_secret_key" if aws and _AWS_SECRET_VALUE.fullmatch(value) else "secret"
            yield Finding(kind, m.start(group), m.end(group))


# --- putting them together ----------------------------------------------------------------------------------


def find_secrets(text: str, *, config: SecretsConfig | None = None) -> list[Finding]:
    """Every secret in `text` as non-overlapping findings sorted by position.

    Where detectors overlap, a specific kind wins over the assignment detector (a GitHub token assigned to
    `GITHUB_TOKEN` counts as github_token); among the rest the earlier, then the longer, finding wins."""
    config = config or SecretsConfig()
    kinds = set(config.kinds)
    specific: list[Finding] = []
    if "private_key" in kinds:
        specific.extend(_private_keys(text))
    if "jwt" in kinds:
        specific.extend(_jwts(text))
    specific.extend(_tokens(text, kinds))
    if "email" in kinds:
        specific.extend(_emails(text))
    if "ip_address" in kinds:
        specific.extend(_ips(text))
    chosen = _non_overlapping(specific)
    if "secret" in kinds or "aws_secret_key" in kinds:
        starts = [f.start for f in chosen]
        assigned = [
            f for f in _assigned_secrets(text, config)
            if f.kind in kinds and not _overlaps(f, chosen, starts)
        ]  # fmt: skip
        chosen = sorted(chosen + assigned, key=lambda f: f.start)
    return chosen


def _non_overlapping(findings: list[Finding]) -> list[Finding]:
    kept: list[Finding] = []
    for f in sorted(findings, key=lambda f: (f.start, f.start - f.end)):
        if not kept or f.start >= kept[-1].end:
            kept.append(f)
    return kept


def _overlaps(finding: Finding, chosen: list[Finding], starts: list[int]) -> bool:
    i = bisect.bisect_right(starts, finding.start)
    return (i > 0 and chosen[i - 1].end > finding.start) or (
        i < len(chosen) and chosen[i].start < finding.end
    )


def redact(text: str, *, config: SecretsConfig | None = None) -> tuple[str, Counter[str]]:
    """`text` with every finding replaced by its kind's placeholder, and how many were replaced per kind.

    Idempotent with the default placeholders: they match no detector, so a second pass changes nothing."""
    config = config or SecretsConfig()
    findings = find_secrets(text, config=config)
    counts: Counter[str] = Counter(f.kind for f in findings)
    if not findings:
        return text, counts
    parts: list[str] = []
    pos = 0
    for f in findings:
        parts.append(text[pos : f.start])
        parts.append(config.placeholder_for(f.kind))
        pos = f.end
    parts.append(text[pos:])
    return "".join(parts), counts


def redact_document(doc: Document, *, config: SecretsConfig | None = None) -> Counter[str]:
    """Redact a `Document` in place: its text, and `meta["redactions"]` (kind -> count, set only when any).
    Returns the counts, for the stage's `StageCounts.changed`."""
    doc.text, counts = redact(doc.text, config=config)
    if counts:
        doc.meta["redactions"] = dict(sorted(counts.items()))
    return counts
