"""The committed params reference is generated from the typed config and must not drift."""

from pathlib import Path

from wmcore.config import Params
from wmcore.paramsdoc import params_reference

ROOT = Path(__file__).resolve().parents[1]


def test_reference_lists_every_key():
    text = params_reference()
    for key in Params().flat():
        assert f"`{key.split('.')[0]}." in text


def test_committed_reference_is_current():
    assert (ROOT / "docs/params.md").read_text() == params_reference(), "run `wm params-doc` and commit docs/params.md"
