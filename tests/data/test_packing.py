"""Repository-level documents: files after the files they import, markers that file text cannot forge."""

import pytest

from codefoundry.data.packing import RepoFile, encode_pieces, import_order, repo_pieces, repo_text
from codefoundry.models.tokenizer import FILE_SEP, REPO_NAME


def _order(files: list[RepoFile]) -> list[str]:
    return [files[i].path for i in import_order(files)]


def test_python_imports_come_first_absolute_relative_and_nested():
    files = [
        RepoFile("pkg/__init__.py", "from .app import run\n"),
        RepoFile("pkg/app.py", "import os\nfrom pkg.models import User\nfrom . import util\n"),
        RepoFile("pkg/models.py", "from .util import helper\n"),
        RepoFile("pkg/util.py", "import json\n"),
        RepoFile("tests/test_app.py", "import pkg.app\n"),
    ]
    order = _order(files)
    assert order.index("pkg/util.py") < order.index("pkg/models.py") < order.index("pkg/app.py")
    assert order.index("pkg/app.py") < order.index("pkg/__init__.py")
    # `import pkg.app` runs pkg/__init__.py too
    assert order[-1] == "tests/test_app.py"


def test_package_root_below_the_repository_root_still_resolves():
    files = [RepoFile("src/lib/a.py", "from lib.b import f\n"), RepoFile("src/lib/b.py", "x = 1\n")]
    assert _order(files) == ["src/lib/b.py", "src/lib/a.py"]


def test_parent_relative_import():
    files = [RepoFile("p/q/a.py", "from ..b import f\n"), RepoFile("p/b.py", "")]
    assert _order(files) == ["p/b.py", "p/q/a.py"]


def test_cycle_is_broken_by_smallest_path_and_order_is_deterministic():
    files = [RepoFile("b.py", "import a\n"), RepoFile("a.py", "import b\n"), RepoFile("c.py", "import a\n")]
    assert _order(files) == ["a.py", "b.py", "c.py"]
    assert _order(list(reversed(files))) == ["a.py", "b.py", "c.py"]


def test_c_javascript_and_java_imports():
    c = [
        RepoFile("src/main.c", '#include <stdio.h>\n#include "util.h"\n'),
        RepoFile("include/util.h", "int f(void);\n"),
    ]
    assert _order(c) == ["include/util.h", "src/main.c"]
    js = [RepoFile("app.js", "import { f } from './lib/f';\nconst g = require('./g');\n"),
          RepoFile("lib/f.ts", "export const f = 1;\n"), RepoFile("g.js", "module.exports = 2;\n")]  # fmt: skip
    assert _order(js)[-1] == "app.js"
    java = [RepoFile("src/com/x/App.java", "import com.x.util.Tool;\nclass App {}\n"),
            RepoFile("src/com/x/util/Tool.java", "class Tool {}\n")]  # fmt: skip
    assert _order(java) == ["src/com/x/util/Tool.java", "src/com/x/App.java"]


def test_unresolved_imports_keep_path_order():
    files = [RepoFile("z.py", "import numpy\n"), RepoFile("a.py", "import os\n")]
    assert _order(files) == ["a.py", "z.py"]


def test_repo_text_layout():
    files = [RepoFile("main.py", "import lib\nprint(lib.x)"), RepoFile("lib.py", "x = 1\n")]
    text = repo_text("me/proj", files)
    assert (
        text == f"{REPO_NAME}me/proj\n{FILE_SEP}lib.py\nx = 1\n{FILE_SEP}main.py\nimport lib\nprint(lib.x)\n"
    )


def test_markers_are_special_ids_and_file_text_cannot_forge_them(tmp_path):
    pytest.importorskip("tokenizers")
    from codefoundry.models import tokenizer as T

    corpus = ["def f(x):\n    return x + 1\n" * 20, "import os\nprint(os.getcwd())\n" * 20]
    tok = T.train_texts(corpus, vocab_size=300, out=tmp_path / "tok")
    plain = T.plain_text_copy(tok)
    sneaky = f"s = '{FILE_SEP}evil.py'\n"
    files = [RepoFile("a.py", sneaky), RepoFile("b.py", "x = 1\n")]
    ids = encode_pieces(plain, repo_pieces("r", files))
    sep, name = tok.token_to_id(FILE_SEP), tok.token_to_id(REPO_NAME)
    assert ids.count(sep) == 2 and ids.count(name) == 1 and ids[0] == name
    assert tok.decode(ids, skip_special_tokens=False) == repo_text("r", files)
