"""Every data file listed in data/README.md is present and has the SHA-256 published there."""

import hashlib
import re

from tests.conftest import REPO

DATA = REPO / "data"
# Token folders that charlm/prepare.py and lm/prepare.py derive from the shipped text (gitignored).
DERIVED = {"char", "bpe4096"}


def listed_files() -> list[tuple[str, str]]:
    readme = (DATA / "README.md").read_text()
    return re.findall(r"^\| `(\S+)` \| [^|]+ \| `([0-9a-f]{64})` \|$", readme, flags=re.M)


def test_readme_lists_every_shipped_file():
    names = {name for name, _ in listed_files()}
    shipped = {p.name for p in DATA.rglob("*") if p.is_file() and p.name != "README.md" and not DERIVED & set(p.parts)}
    assert shipped == names


def test_shipped_files_match_sha256():
    for name, digest in listed_files():
        (path,) = [p for p in DATA.rglob(name) if not DERIVED & set(p.parts)]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, name
