"""Secrets/PII redaction on a corpus the test writes: one planted secret of every kind (fake values in the
right format, drawn from a seeded RNG) and decoys of every guard that must come through byte for byte."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import string
import uuid
from collections import Counter
from pathlib import Path

import pytest

from codefoundry.data import secrets as secrets_module
from codefoundry.data.document import Document
from codefoundry.data.secrets import KINDS, SecretsConfig, find_secrets, redact, redact_document

ALNUM = string.ascii_letters + string.digits
UPPER_NUM = string.ascii_uppercase + string.digits
B64 = ALNUM + "+/"
B64URL = ALNUM + "-_"
DIGITS = string.digits


def draw(rng: random.Random, alphabet: str, n: int, *, digit: bool = True) -> str:
    """n random characters; with `digit`, the last one is a digit so the value never reads as a name."""
    body = "".join(rng.choice(alphabet) for _ in range(n - 1 if digit else n))
    return body + rng.choice(string.digits) if digit else body


def b64url(obj: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def planted_secrets(rng: random.Random) -> dict[str, list[str]]:
    """{kind: fake values in the kind's format}: one per kind, more where a kind has several forms."""
    key_body = "\n".join(draw(rng, B64, 64, digit=False) for _ in range(6))
    secrets = {
        "private_key": [f"-----BEGIN RSA PRIVATE KEY-----\n{key_body}\n-----END RSA PRIVATE KEY-----"],
        "jwt": [f"{b64url({'alg': 'HS256', 'typ': 'JWT'})}.{b64url({'sub': '42', 'name': 'A'})}."
                f"{draw(rng, B64URL, 43)}"],
        "aws_access_key": ["AKIA" + draw(rng, UPPER_NUM, 16)],
        "aws_secret_key": [draw(rng, ALNUM, 30) + "/" + draw(rng, B64, 9)],
        "github_token": ["ghp_" + draw(rng, ALNUM, 36),
                         f"github_pat_{draw(rng, ALNUM, 22)}_{draw(rng, ALNUM, 59)}"],
        "slack_token": [f"xoxb-{draw(rng, DIGITS, 12)}-{draw(rng, DIGITS, 13)}-{draw(rng, ALNUM, 24)}"],
        "slack_webhook": ["https://hooks.slack.com/services/"
                          f"T{draw(rng, UPPER_NUM, 8)}/B{draw(rng, UPPER_NUM, 10)}/{draw(rng, ALNUM, 24)}"],
        "google_api_key": ["AIza" + draw(rng, B64URL, 35)],
        "stripe_key": ["sk_live_" + draw(rng, ALNUM, 24)],
        "openai_key": [f"sk-proj-{draw(rng, B64URL, 40)}T3BlbkFJ{draw(rng, B64URL, 40)}"],
        "anthropic_key": [f"sk-ant-api03-{draw(rng, B64URL, 93)}"],
        "huggingface_token": ["hf_" + draw(rng, ALNUM, 34)],
        "email": [f"{draw(rng, string.ascii_lowercase, 7, digit=False)}.roe@mailhost.de"],
        "ip_address": ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"],
        "secret": [draw(rng, ALNUM, 24), draw(rng, ALNUM, 32), draw(rng, B64URL, 20)],
    }  # fmt: skip
    return secrets


def planted_corpus(tmp_path: Path) -> tuple[dict[str, str], dict[str, list[str]], list[str]]:
    """Writes the corpus; returns {file: text}, {kind: planted values}, and the decoy lines."""
    rng = random.Random(20240605)
    secrets = s = planted_secrets(rng)
    config_py = f'''"""Service settings."""
AWS_ACCESS_KEY_ID = "{s["aws_access_key"][0]}"
aws_secret_access_key = "{s["aws_secret_key"][0]}"
GITHUB_TOKEN = "{s["github_token"][0]}"
gh_fine_grained = "{s["github_token"][1]}"
SLACK = "{s["slack_token"][0]}"
WEBHOOK = "{s["slack_webhook"][0]}"
maps = Client(key="{s["google_api_key"][0]}")
stripe.api_key = "{s["stripe_key"][0]}"
client = OpenAI(api_key="{s["openai_key"][0]}")
anthropic_client = Anthropic(api_key="{s["anthropic_key"][0]}")
HF = "{s["huggingface_token"][0]}"
db_password: str = "{s["secret"][0]}"
headers = {{"Authorization": "Bearer {s["jwt"][0]}"}}
# maintainer: {s["email"][0]}
UPSTREAM = ("{s["ip_address"][0]}", 443)
UPSTREAM_V6 = "[{s["ip_address"][1]}]:443"
'''
    settings_yaml = f"service:\n  client_secret: {s['secret'][1]}\n  region: eu-west-1\n"
    creds_json = json.dumps({"auth": {"accessToken": s["secret"][2]}}, indent=2) + "\n"
    key_pem = s["private_key"][0] + "\n"
    decoys = decoy_lines(rng)
    test_py = "import hashlib\n\n\ndef test_fixtures():\n" + "".join(f"    {line}\n" for line in decoys)
    files = {"config.py": config_py, "settings.yaml": settings_yaml, "creds.json": creds_json,
             "key.pem": key_pem, "test_fixtures.py": test_py}  # fmt: skip
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    return {n: (tmp_path / n).read_text(encoding="utf-8") for n in files}, secrets, decoys


def decoy_lines(rng: random.Random) -> list[str]:
    """Lines every guard must leave alone, byte for byte."""
    sha256 = hashlib.sha256(b"abc").hexdigest()
    return [
        # digests, UUIDs and base64 fixtures outside secret-named assignments
        f'expected = "{sha256}"',
        f'self.assertEqual(hashlib.md5(b"").hexdigest(), "{hashlib.md5(b"").hexdigest()}")',
        f'sha1 = "{hashlib.sha1(b"x").hexdigest()}"',
        f'"integrity": "sha512-{base64.b64encode(hashlib.sha512(b"pkg").digest()).decode()}",',
        f'request_id = "{uuid.UUID(int=rng.getrandbits(128))}"',
        f'FIXTURE = "{base64.b64encode(rng.randbytes(48)).decode()}"',
        f'password_hash = "{hashlib.sha256(b"pw").hexdigest()}"',
        # versions, OIDs and addresses that are not public hosts
        '__version__ = "10.20.30.40"',
        "see section 7.4.7.1 for the grammar",
        "oid = ObjectIdentifier('2.5.29.30')",
        "snmp = '1.3.6.1.4.1.311.2'",
        'HOSTS = ["0.0.0.0", "127.0.0.1", "10.1.2.3", "192.168.1.20", "192.0.2.44", "8.8.8.8", "100.64.0.7"]',
        'V6 = ["::1", "fe80::1", "2001:db8::1", "ff02::1"]',
        "xs = x[1::2]; std::vector<int> v; at 12:30:45",
        # placeholders and documentation keys
        'api_key = "YOUR_API_KEY"',
        'password = "changeme"',
        'token = "xxxxxxxxxxxxxxxxxxxxxxxx"',
        'AWS_ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"',
        'aws_secret_access_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"',
        'GITHUB_TOKEN = "ghp_' + "x" * 36 + '"',
        'SECRET_KEY = os.environ["SECRET_KEY"]',
        'password = "${DB_PASSWORD}"',
        'password = "aaaabbbbccccdddd"',
        # addresses that are kept, and `@` that is not an address
        "mail = 'someone@example.com'  # also noreply@github.com",
        "git clone git@github.com:org/repo.git",
        "y = x@self.weight",
        # names that mention secrets but hold none
        'tokenizer = "bert-base-uncased-v2x"',
        'eos_token = "<|endoftext|>"',
        'token_url = "https://oauth2.example.org/token/v1"',
        '_TOKENIZER_FOR_DOC = "RobertaTokenizer"',
        f'jwt_like = "{b64url({"nota": "jwt"})}.{b64url({"x": 1})}.{draw(rng, B64URL, 20)}"',
        'PEM_HEADER = "-----BEGIN RSA PRIVATE KEY-----"',
        'PEM_FOOTER = "-----END RSA PRIVATE KEY-----"',
    ]


def test_every_planted_secret_is_found_exactly_and_every_decoy_survives(tmp_path):
    files, secrets, decoys = planted_corpus(tmp_path)
    found: dict[str, list[str]] = {}
    total: Counter[str] = Counter()
    out = {}
    for name, text in files.items():
        for f in find_secrets(text):
            found.setdefault(f.kind, []).append(text[f.start : f.end])
        out[name], counts = redact(text)
        total.update(counts)

    assert set(secrets) == set(KINDS)
    assert {k: sorted(v) for k, v in found.items()} == {k: sorted(v) for k, v in secrets.items()}
    assert total == Counter({k: len(v) for k, v in secrets.items()})
    everything = "".join(out.values())
    for values in secrets.values():
        for value in values:
            assert value not in everything
    for line in decoys:
        assert f"    {line}\n" in out["test_fixtures.py"], line
    assert out["test_fixtures.py"] == files["test_fixtures.py"]
    # the placeholder replaces the value only: names, quotes and layout stay
    assert 'GITHUB_TOKEN = "<GITHUB_TOKEN>"\n' in out["config.py"]
    assert 'db_password: str = "<SECRET>"\n' in out["config.py"]
    assert '"Authorization": "Bearer <JWT>"' in out["config.py"]
    assert out["settings.yaml"] == "service:\n  client_secret: <SECRET>\n  region: eu-west-1\n"
    assert out["key.pem"] == "<PRIVATE_KEY>\n"


def test_redaction_is_idempotent_and_placeholders_trigger_nothing(tmp_path):
    files, _, _ = planted_corpus(tmp_path)
    for text in files.values():
        once, _ = redact(text)
        twice, counts = redact(once)
        assert twice == once
        assert counts == Counter()
    in_context = "\n".join(
        f'{name} = "{SecretsConfig().placeholder_for(kind)}"  # {SecretsConfig().placeholder_for(kind)}'
        for kind in KINDS
        for name in ("password", "api_key", "SECRET_KEY", "email", "host")
    )
    assert find_secrets(in_context) == []


def test_config_chooses_kinds_and_placeholder():
    rng = random.Random(1)
    token = "ghp_" + draw(rng, ALNUM, 36)
    text = f'GITHUB_TOKEN = "{token}"\nowner = "ann.lee@mailhost.de"\n'
    only_email = SecretsConfig(kinds=("email",), placeholder="[{kind}]")
    out, counts = redact(text, config=only_email)
    assert out == f'GITHUB_TOKEN = "{token}"\nowner = "[email]"\n'
    assert counts == Counter(email=1)
    # with github_token off, the generic assignment detector still sees a high-entropy secret
    out, counts = redact(text, config=SecretsConfig(kinds=("secret",)))
    assert counts == Counter(secret=1) and token not in out
    with pytest.raises(ValueError, match="unknown kind.*passport"):
        SecretsConfig(kinds=("email", "passport"))


def test_entropy_threshold_and_min_length_bound_the_generic_detector():
    text = 'password = "hunter2hunter2hunter2"\napi_key = "Zq8Lm3Xv"\n'
    assert find_secrets(text) == []  # low entropy; too short
    loose = SecretsConfig(entropy_threshold=2.0, min_secret_length=8)
    assert [f.kind for f in find_secrets(text, config=loose)] == ["secret", "secret"]


def test_redact_document_records_counts_in_meta():
    doc = Document(id="r:a.py", text='ip = "93.184.216.34"\nmail = "bo.chen@mailhost.de"\n')
    counts = redact_document(doc)
    assert counts == Counter(ip_address=1, email=1)
    assert doc.text == 'ip = "<IP_ADDRESS>"\nmail = "<EMAIL>"\n'
    assert doc.meta["redactions"] == {"email": 1, "ip_address": 1}
    clean = Document(id="r:b.py", text="x = 1\n")
    assert redact_document(clean) == Counter() and "redactions" not in clean.meta


MB = 1 << 20
PATHOLOGICAL = {
    "letters": "a" * MB,
    "at signs": "a@" * (MB // 2),
    "dotted digits": "1." * (MB // 2),
    "colons": "a:" * (MB // 2),
    "hex colons": "ab::" * (MB // 4),
    "jwt prefixes": "eyJ" * (MB // 3),
    "openai prefixes": "sk-" * (MB // 3),
    "aws prefixes": "AKIA" * (MB // 4),
    "secret words": "password=" * (MB // 9),
    "key words": "api_key" * (MB // 7),
    "pem begins": "-----BEGIN PRIVATE KEY-----\n" * (MB // 28),
    "long base64": "token = '" + "Ab9+" * (MB // 4),
    "dotted labels": "x@" + "a." * (MB // 2),
}


@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
def test_adversarial_megabyte_lines_finish_linearly(name):
    """A regex that backtracks over a long run would hang here for hours; a linear scan takes milliseconds."""
    text = PATHOLOGICAL[name]
    out, counts = redact(text)
    assert counts == Counter() and out == text


def test_public_api():
    assert sorted(secrets_module.__all__) == [
        "Finding", "KINDS", "SecretsConfig", "find_secrets", "redact", "redact_document", "shannon_entropy",
    ]  # fmt: skip
