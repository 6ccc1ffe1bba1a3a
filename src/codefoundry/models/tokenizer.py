"""The code tokenizer: byte-level BPE trained with Hugging Face `tokenizers`, saved as `tokenizer.json`
(plus the config files `transformers`' `PreTrainedTokenizerFast` reads), with the special tokens code work
needs: end of text, fill-in-the-middle, repository packing and chat.

Byte-level BPE with no normaliser and no prefix space is lossless: decoding the ids of any UTF-8 text
gives the text back, whitespace and indentation included (tested on every file of the corpus). Runs
without a break longer than `MAX_PRE_TOKEN_BYTES` are cut into pieces that long, which bounds the cost
of training on them and changes no text. The default corpus is the Python standard library of the
running interpreter.
"""

from __future__ import annotations

import contextlib
import errno
import json
import sysconfig
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from codefoundry.paths import output_dir

EOT = "<|endoftext|>"
FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD = (
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
)
REPO_NAME, FILE_SEP = "<|repo_name|>", "<|file_sep|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (EOT, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD, REPO_NAME, FILE_SEP, IM_START, IM_END)
# A chat template in the tokenizer's own chat tokens (ChatML layout), for SFT and chat backends.
CHAT_TEMPLATE = (
    "{% for m in messages %}" + IM_START + "{{ m['role'] }}\n{{ m['content'] }}" + IM_END + "\n{% endfor %}"
    "{% if add_generation_prompt %}" + IM_START + "assistant\n{% endif %}"
)


# The longest pre-token (BPE "word"), in bytes: longer runs without a break (base64 of zeros, a rule of
# '#', a screen of blank lines) are cut into pieces this long. The trainer's merges within one word cost
# its length squared: a 2 MB run of "A" did not finish training in 5 minutes. Code's real words are far
# shorter, so no learned token is lost.
MAX_PRE_TOKEN_BYTES = 256
# Bounds on the options: the trainer reserves memory for the whole vocabulary up front (2**31 tokens
# asked for 141 GB and aborted the process), and Rust integers overflow past these.
MAX_VOCAB_SIZE = 1 << 20
MAX_MIN_FREQUENCY = 1 << 32

# Installed third-party code and tool caches are not the corpus a directory names.
SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", ".git", "node_modules", ".venv"})


def default_corpus() -> list[Path]:
    """The .py files of the running interpreter's standard library (site-packages excluded), sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and p.is_file())


def corpus_files(data: str | Path | None, *, suffixes: Sequence[str] = (".py",)) -> list[Path]:
    if data is None:
        return default_corpus()
    data = Path(data)
    if data.is_file():
        return [data]
    if not data.is_dir():
        raise FileNotFoundError(f"{data}: no such file or directory")
    return sorted(
        p
        for p in data.rglob("*")
        if p.suffix in suffixes and not SKIP_DIRS.intersection(p.relative_to(data).parts[:-1]) and p.is_file()
    )


def read_source(path: Path) -> str:
    """A source file's text exactly as its bytes hold it (UTF-8): line ends are kept, where `read_text`
    turned "\r\n" and a lone "\r" into "\n", so CRLF files trained as LF ones and their round trip was
    checked on the translated text, not on the file."""
    return path.read_bytes().decode("utf-8")


def read_texts(files: Iterable[Path], *, skipped: list[Path] | None = None) -> Iterator[str]:
    """The UTF-8 text of each file (`read_source`); files that are not UTF-8 are skipped (byte-level BPE
    could encode them, but every consumer of the tokenizer works on text) and appended to `skipped` when
    given."""
    for path in files:
        try:
            yield read_source(path)
        except (UnicodeDecodeError, OSError):
            if skipped is not None:
                skipped.append(path)


@dataclass(frozen=True)
class TrainReport:
    files: int  # the files trained on
    vocab_size: int
    bytes_per_token: float
    out: str
    skipped: int = 0  # files skipped as not UTF-8 (or unreadable)
    round_trip_failures: tuple[str, ...] = ()  # corpus files whose ids do not decode back exactly


def train(files: Sequence[Path], *, vocab_size: int, out: str | Path, min_frequency: int = 2):
    """Train a byte-level BPE on `files`, save it to `out`, and return the `tokenizers.Tokenizer`."""
    return train_texts(read_texts(files), vocab_size=vocab_size, out=out, min_frequency=min_frequency)


def train_texts(texts: Iterable[str], *, vocab_size: int, out: str | Path, min_frequency: int = 2):
    """Train a byte-level BPE on `texts` (any iterable, consumed once), save it to `out`, return it."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    check_options(vocab_size, min_frequency)
    tok = Tokenizer(models.BPE())
    # After ByteLevel every byte is one printable character (no "\n"), so "." matches each of them.
    cut = pre_tokenizers.Split(Regex(f".{{1,{MAX_PRE_TOKEN_BYTES}}}"), behavior="isolated")
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), cut]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    _train_interruptibly(tok, texts, trainer)
    save(tok, out)
    return tok


def _train_interruptibly(tok, texts: Iterable[str], trainer) -> None:
    """`tok.train_from_iterator` on a daemon thread while this one waits in short joins, which a Ctrl-C
    interrupts: the trainer (Rust, the GIL released) never checks for signals, so a Ctrl-C took effect only
    when training ended (15 s on the standard library, minutes on a big corpus). Interrupted, nothing is
    saved; the thread is left to end with the process."""
    failure: list[BaseException] = []

    def work() -> None:
        try:
            tok.train_from_iterator(texts, trainer=trainer)
        except BaseException as e:  # re-raised in the waiting thread
            failure.append(e)

    thread = threading.Thread(target=work, name="cf-bpe-train", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.1)
    if failure:
        raise failure[0]


def check_options(vocab_size: int, min_frequency: int) -> None:
    least = 256 + len(SPECIAL_TOKENS)
    if vocab_size < least:
        raise ValueError(f"vocab_size must be at least {least} (bytes + special tokens), got {vocab_size}")
    if vocab_size > MAX_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be at most {MAX_VOCAB_SIZE:,}, got {vocab_size}")
    if min_frequency < 0:
        raise ValueError(f"min_frequency must be >= 0, got {min_frequency}")
    if min_frequency > MAX_MIN_FREQUENCY:
        raise ValueError(f"min_frequency must be at most {MAX_MIN_FREQUENCY:,}, got {min_frequency}")


def save(tok, out: str | Path) -> None:
    """`tokenizer.json` plus the config files transformers' `PreTrainedTokenizerFast` reads.
    `tokenizer.json` is written under a temporary name and renamed, so a killed save leaves no torn one.
    A file that cannot be written is an OSError naming it."""
    out = output_dir(out)
    tmp = out / "tokenizer.json.tmp"
    try:
        tok.save(str(tmp))
    except OSError:
        raise
    except Exception as e:  # the bare Exception tokenizers raises when it cannot write, made an OSError
        raise OSError(errno.EIO, str(e), str(tmp)) from None
    tmp.replace(out / "tokenizer.json")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": EOT,
        "pad_token": FIM_PAD,
        "unk_token": None,
        "additional_special_tokens": [t for t in SPECIAL_TOKENS if t not in (EOT, FIM_PAD)],
        "model_max_length": 1 << 20,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special = {
        "eos_token": EOT,
        "pad_token": FIM_PAD,
        "additional_special_tokens": config["additional_special_tokens"],
    }
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2))


def load(path: str | Path):
    """A saved tokenizer (`tokenizer.json`, or the directory holding it) as a `tokenizers.Tokenizer`."""
    from tokenizers import Tokenizer

    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(
            f"{file}: no such tokenizer file (train one with codefoundry tokenizer train)"
        )
    try:
        return Tokenizer.from_file(str(file))
    except Exception as e:  # the tokenizers library raises a bare Exception for a malformed file
        raise ValueError(f"{file}: not a readable tokenizer ({e})") from None


def special_id(tokenizer, token: str, why: str = "") -> int:
    """The id of a special token, or a ValueError naming it (and `why` it is needed)."""
    i = tokenizer.token_to_id(token)
    if i is None:
        need = f", which {why} needs" if why else ""
        raise ValueError(f"tokenizer: no {token} token{need} (train one with codefoundry tokenizer train)")
    return i


def plain_text_copy(tok):
    """A copy of `tok` that encodes special-token strings found in text as ordinary text, so data (or a
    chat message) cannot forge a document boundary or a role marker."""
    from tokenizers import Tokenizer

    plain = Tokenizer.from_str(tok.to_str())
    plain.encode_special_tokens = True
    return plain


_PLAIN: dict[int, tuple[object, object]] = {}  # id(tokenizer) -> (tokenizer kept alive, its plain copy)


def plain_encoder(tok):
    """`plain_text_copy(tok)`, made once per tokenizer object: what user text (prompts, prefixes,
    suffixes) is encoded with, as training encodes documents."""
    hit = _PLAIN.get(id(tok))
    if hit is not None and hit[0] is tok:
        return hit[1]
    plain = plain_text_copy(tok)
    _PLAIN[id(tok)] = (tok, plain)
    return plain


def bytes_per_token(tok, texts: Iterable[str]) -> float:
    """Compression: UTF-8 bytes of the texts per token (higher is better), the texts encoded as documents
    are (`plain_encoder`: special-token text is text, not one control token)."""
    tok = plain_encoder(tok)
    n_bytes = n_tokens = 0
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == 256:
            n_bytes, n_tokens = _count(tok, batch, n_bytes, n_tokens)
            batch = []
    n_bytes, n_tokens = _count(tok, batch, n_bytes, n_tokens)
    return n_bytes / max(1, n_tokens)


def measure(tok, files: Sequence[Path]) -> tuple[float, list[str]]:
    """One pass over the readable UTF-8 `files`, each encoded as documents are (`plain_encoder`): bytes per
    token (`bytes_per_token`) and the files whose ids do not decode back to their exact text
    (`round_trip_failures`; should be none)."""
    tok = plain_encoder(tok)
    n_bytes = n_tokens = 0
    failures: list[str] = []
    for lo in range(0, len(files), 256):
        paths, texts = [], []
        for path in files[lo : lo + 256]:
            try:
                texts.append(read_source(path))
            except (UnicodeDecodeError, OSError):
                continue
            paths.append(path)
        ids = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
        decoded = tok.decode_batch(ids, skip_special_tokens=False)
        failures += [str(p) for p, text, back in zip(paths, texts, decoded, strict=True) if back != text]
        n_bytes += sum(len(t.encode("utf-8")) for t in texts)
        n_tokens += sum(map(len, ids))
    return n_bytes / max(1, n_tokens), failures


def _count(tok, batch: list[str], n_bytes: int, n_tokens: int) -> tuple[int, int]:
    if batch:
        n_bytes += sum(len(t.encode("utf-8")) for t in batch)
        n_tokens += sum(len(e.ids) for e in tok.encode_batch(batch, add_special_tokens=False))
    return n_bytes, n_tokens


def round_trip_failures(tok, files: Iterable[Path]) -> list[str]:
    """Files whose text does not decode back exactly from its token ids (should be none), encoded as
    documents are (`plain_encoder`); unreadable and non-UTF-8 files are left out (`measure`)."""
    return measure(tok, list(files))[1]


MODEL_BIN = "pytorch_model.bin"  # besides *.safetensors: a model's weights, so a checkpoint directory


def check_out(out: str | Path) -> Path:
    """`out` made (`output_dir`) and checked before training: writable, and not a model checkpoint, whose
    tokenizer a new one would silently replace (the model's ids would then mean other text)."""
    import tempfile

    out = output_dir(out)
    weights = sorted(p.name for p in out.glob("*") if p.suffix == ".safetensors" or p.name == MODEL_BIN)
    if weights:
        raise ValueError(f"{out}: holds a model ({weights[0]}), whose tokenizer this would replace")
    try:
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise ValueError(f"{out}: cannot write there ({e.strerror})") from None
    return out


def train_command(data: str | None, vocab_size: int, out: str, min_frequency: int = 2) -> TrainReport:
    """What `codefoundry tokenizer train` does: train, save, and measure compression and the round trip on
    every file of the corpus."""
    check_options(vocab_size, min_frequency)
    files = corpus_files(data)
    if not files:
        # the suffix named: a directory of .js or .c sources, which are not read, had "no source files"
        raise FileNotFoundError(
            f"{data}: no source files to train on (a directory is read for its .py files)"
        )
    skipped: list[Path] = []
    if not any(read_texts(files, skipped=skipped)):  # stops at the first non-empty text
        raise ValueError(f"{data}: no non-empty UTF-8 source files ({len(skipped)} skipped as not UTF-8)")
    made = not Path(out).exists()
    check_out(out)
    skipped.clear()
    texts = read_texts(files, skipped=skipped)
    try:
        tok = train_texts(texts, vocab_size=vocab_size, out=out, min_frequency=min_frequency)
    except OSError as e:  # from `save`: a full disk, a folder where tokenizer.json goes, ...
        where = e.filename2 or e.filename or out
        raise ValueError(f"{where}: cannot save the tokenizer ({e.strerror or e})") from None
    except KeyboardInterrupt:  # before the save: the directory made for it goes too, if still empty
        if made:
            with contextlib.suppress(OSError):
                Path(out).rmdir()
        raise
    try:
        compression, failures = measure(tok, files)
    except KeyboardInterrupt:  # it said only "interrupted", though a usable tokenizer had been written
        raise KeyboardInterrupt(
            f"interrupted after {Path(out) / 'tokenizer.json'} was saved: only measuring its compression and"
            " round trip was cut short"
        ) from None
    return TrainReport(len(files) - len(skipped), tok.get_vocab_size(), round(compression, 3), str(out),
                       len(skipped), tuple(failures))  # fmt: skip
