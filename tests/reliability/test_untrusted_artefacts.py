"""Untrusted files: checkpoints that carry code or are damaged, input names that try to leave the output folder.

A checkpoint is loaded with `weights_only=True`: a pickle that would run a command is refused with
one line naming the file, and the command never runs. Output names are made safe, so `..`,
backslashes and absolute anchors in input names or globs write nothing outside `--out`.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from tests.reliability.generated import write_images
from tests.reliability.wm_process import PREDICT_SETS, cli_args, run_wm
from wmcore.cli import main
from wmcore.model.unet import UNet


class RunsACommand:
    """Unpickling this calls os.system: what a booby-trapped checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def tampered_checkpoint(path: Path, marker: Path) -> Path:
    net = UNet(base_width=4, depth=2)
    torch.save({"model": net.state_dict(), "model_args": net.model_args(), "meta": RunsACommand(marker)}, path)
    return path


def bit_flipped_checkpoint(path: Path, source: Path) -> Path:
    data = bytearray(source.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)  # a damaged download: zeros in the middle of the archive
    path.write_bytes(bytes(data))
    return path


def renamed_pickle(path: Path, marker: Path) -> Path:
    """A plain (not torch zip) pickle saved as .pt."""
    path.write_bytes(pickle.dumps({"model": RunsACommand(marker)}, protocol=2))
    return path


def mismatched_weights(path: Path) -> Path:
    net = UNet(base_width=4, depth=2)
    torch.save({"model": net.state_dict(), "model_args": {**net.model_args(), "base_width": 8}, "meta": {}}, path)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        ("tampered", "refused: checkpoint holds objects that are not plain weights"),
        ("renamed_pickle", "refused: checkpoint holds objects that are not plain weights"),
        ("bit_flipped", "refused: damaged or altered (CRC mismatch in"),
        ("mismatched", "weights do not match the stored model_args"),
    ],
)
def test_bad_checkpoints_are_refused_without_running_their_code(tmp_path, checkpoint, capsys, make, message):
    marker = tmp_path / "PWNED"
    path = tmp_path / f"{make}.pt"
    {
        "tampered": lambda: tampered_checkpoint(path, marker),
        "renamed_pickle": lambda: renamed_pickle(path, marker),
        "bit_flipped": lambda: bit_flipped_checkpoint(path, checkpoint),
        "mismatched": lambda: mismatched_weights(path),
    }[make]()
    write_images(tmp_path / "inbox", 2)
    argv = cli_args("predict", str(tmp_path / "inbox"), "--out", str(tmp_path / "out"), "--model", str(path),
                    sets=(*PREDICT_SETS, f"paths.cache_dir={tmp_path / 'cache'}"))  # fmt: skip
    assert main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"wm predict: error: {path}: {message}"), error
    assert not marker.exists()  # the pickled command never ran


def test_the_tampered_file_really_would_run_code(tmp_path):
    """Proof that the payload above is live: an unsafe load runs it (so its refusal means something)."""
    marker = tmp_path / "PWNED"
    torch.load(tampered_checkpoint(tmp_path / "t.pt", marker), weights_only=False)
    assert marker.exists()


def _snapshot(root: Path, skip: tuple[Path, ...]) -> set[Path]:
    return {p for p in root.rglob("*") if not any(p.is_relative_to(s) for s in skip)}


def test_output_names_cannot_escape_the_output_folder(tmp_path, checkpoint):
    inbox, out = tmp_path / "inbox", tmp_path / "work" / "out"
    (inbox / "a").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    write_images(tmp_path / "outside", 1)
    write_images(inbox, 1)
    evil = inbox / "..\\..\\evil.png"  # backslashes are plain characters in a POSIX name
    evil.write_bytes((inbox / "img00000.png").read_bytes())
    (inbox / "new\nline.png").write_bytes((inbox / "img00000.png").read_bytes())
    out.parent.mkdir()
    before = _snapshot(tmp_path, (out, tmp_path / "cache"))
    escaping_glob = str(inbox / "*" / ".." / ".." / "outside" / "*.png")  # names would start with ../../
    done = run_wm(tmp_path, "predict", str(inbox), escaping_glob, "--out", str(out), "--model", str(checkpoint),
                  sets=(*PREDICT_SETS, f"paths.cache_dir={tmp_path / 'cache'}"))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    created = _snapshot(tmp_path, (out, tmp_path / "cache")) - before
    # nothing outside --out but the MLflow store beside the test's database (mlflow.db, mlruns/) and Prefect's
    assert {p for p in created if not p.relative_to(tmp_path).parts[0].startswith(("mlflow", "mlruns", "prefect"))} == set()
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    names = sorted(r["name"] for r in rows)
    assert names == sorted(["img00000.png", "evil.png", "new_line.png", "a/outside/img00000.png"]), names
    for name in names:
        assert (out / f"{name}.mask.png").resolve().is_relative_to(out.resolve())


def test_checkpoint_archive_holds_only_plain_data(tmp_path, checkpoint):
    """What the CLI writes itself is loadable with weights_only=True (no custom classes inside)."""
    with zipfile.ZipFile(checkpoint) as archive:
        pickled = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    assert b"wmcore" not in pickled
    torch.load(io.BytesIO(checkpoint.read_bytes()), weights_only=True)
