"""The real-photo corpus and font pack: the committed folders are complete and honest, the builder checks
every download's sha256, reads .deb / sdist / Qt .rcc archives and copyright files, keeps evaluation
splits free of training twins, and the "corpus" background source only ever hands out the train split."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from wmcore.config import ConfigError, PrepareParams
from wmcore.data.backgrounds import (
    CORPUS_DIR,
    BackgroundCatalog,
    background_kind,
    corpus_photos,
    corpus_rows,
    discover_backgrounds,
)
from wmcore.data.corpus import SPEC_PATH, build_corpus, build_fonts, hamming, read_package, view_boxes
from wmcore.data.corpus_spec import CorpusCrops, CorpusSpec, load_corpus_spec
from wmcore.data.fonts import FONT_LICENSES, FONT_PACK_DIR, available_faces, covered_scripts, script_characters
from wmcore.data.generator import GeneratorContext, generate_sample
from wmcore.data.packages import Dep5Copyright, bundle_files, fetch, glob_match, rcc_files
from wmcore.errors import WmError

SPLITS = ("train", "val", "test")
ROW_FIELDS = ("file", "split", "category", "package", "package_version", "package_sha256", "path", "license",
              "license_basis", "sha256", "width", "height", "has_text", "page", "grey")  # fmt: skip


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return read_jsonl(CORPUS_DIR / "manifest.jsonl")


@pytest.fixture(scope="module")
def spec() -> CorpusSpec:
    return load_corpus_spec(SPEC_PATH)


# --------------------------------------------------------------------------- the committed corpus


def test_manifest_lists_every_stored_picture_with_its_provenance(rows):
    on_disk = {p.relative_to(CORPUS_DIR).as_posix() for s in SPLITS for p in (CORPUS_DIR / s).rglob("*") if p.is_file()}
    assert on_disk == {r["file"] for r in rows}
    for r in rows:
        missing = [k for k in ROW_FIELDS if r.get(k) in (None, "")]
        assert not missing, (r["file"], missing)
        assert r["file"].startswith(f"{r['split']}/") and r["file"].endswith(".webp")
        assert hashlib.sha256((CORPUS_DIR / r["file"]).read_bytes()).hexdigest() == r["sha256"], r["file"]
        assert len(r["package_sha256"]) == 64


def test_manifest_pins_match_the_spec_and_each_package_ships_its_copyright(rows, spec):
    pins = {p.name: p for p in spec.packages}
    for r in rows:
        pkg = pins[r["package"]]
        assert (r["package_version"], r["package_sha256"], r["split"]) == (pkg.version, pkg.sha256, pkg.split), r["file"]
        source = pkg.copyright_from or pkg.name
        assert (CORPUS_DIR / "licenses" / f"{source}.copyright").is_file(), source


def test_corpus_is_big_varied_and_small_enough_to_commit(rows):
    counts = {s: sum(r["split"] == s for r in rows) for s in SPLITS}
    assert sum(counts.values()) >= 600 and counts["train"] > counts["val"] + counts["test"], counts
    assert 80 <= counts["val"] <= 130 and 110 <= counts["test"] <= 160, counts
    for split in ("val", "test"):
        cats = {r["category"] for r in rows if r["split"] == split}
        assert {"line_art", "people", "facade", "animal", "water"} <= cats, (split, cats)
        assert cats & {"document", "screenshot"} and cats & {"nature", "texture"} and cats & {"mountain", "landscape"}
        assert len(cats) >= 8, (split, cats)
    assert sum(f.stat().st_size for f in CORPUS_DIR.rglob("*") if f.is_file()) < 32 * 2**20


def test_splits_share_no_package_and_no_picture(rows):
    packages = {s: {r["package"] for r in rows if r["split"] == s} for s in SPLITS}
    assert not packages["train"] & packages["val"] and not packages["train"] & packages["test"]
    assert not packages["val"] & packages["test"]
    assert len({r["sha256"] for r in rows}) == len(rows)
    evaluation = [int(r["dhash"], 16) for r in rows if r["split"] != "train"]
    for r in (r for r in rows if r["split"] == "train"):
        assert min(hamming(int(r["dhash"], 16), h) for h in evaluation) > 24, r["file"]  # images.dedup_bits


def test_text_pictures_are_flagged(rows):
    for r in rows:
        assert r["page"] == (r["category"] in ("document", "screenshot")), r["file"]
        assert r["has_text"] or r["category"] not in ("document", "screenshot", "scene_text"), r["file"]


# --------------------------------------------------------------------------- the corpus as a background source


def test_corpus_source_gives_only_the_train_split(rows):
    catalog = discover_backgrounds(PrepareParams(background_sources=["corpus"]))
    train = [r for r in rows if r["split"] == "train"]
    assert len(catalog.photos) == len(train) and not catalog.skipped
    assert all(ref.source == "corpus" and Path(ref.path).parent == CORPUS_DIR / "train" for ref in catalog.photos)
    evaluation = {str(CORPUS_DIR / r["file"]) for r in rows if r["split"] != "train"}
    assert not evaluation & {ref.path for ref in catalog.photos}
    assert len({ref.id for ref in catalog.photos}) == len(catalog.photos)
    assert sum(catalog.sources["corpus"]["licenses"].values()) == len(train)


@pytest.mark.parametrize("split", ["val", "test"])
def test_corpus_photos_hands_evaluation_its_split(split, rows):
    refs = corpus_photos(split)
    assert [ref.path for ref in refs] == [str(CORPUS_DIR / r["file"]) for r in rows if r["split"] == split]
    for ref in refs:
        category = ref.id.split(":")[1].split("/")[0]
        assert background_kind(ref.id) == ("page" if category in ("document", "screenshot") else "photo"), ref.id
        assert ref.has_text == (category in ("document", "screenshot", "scene_text")), ref.id


def test_corpus_rows_refuses_an_unknown_split():
    with pytest.raises(ValueError, match="train, val, test"):
        corpus_rows("holdout")


def test_a_sample_on_a_corpus_screenshot_is_a_page_and_never_mirrored():
    page = next(ref for ref in corpus_photos("train") if ref.id.startswith("corpus:screenshot/"))
    catalog = BackgroundCatalog(photos=[page])
    ctx = GeneratorContext(PrepareParams(min_side=96, max_side=128, clean_share=1.0), 0, catalog)
    sample = generate_sample(ctx, "train", 0)
    assert (sample.source, sample.background_kind, sample.scene_text) == (page.id, "page", True)


# --------------------------------------------------------------------------- the font pack


def test_font_pack_has_thirty_families_each_with_a_license_and_verified_scripts():
    pack = read_jsonl(FONT_PACK_DIR / "manifest.jsonl")
    assert len({r["family"] for r in pack}) >= 30
    faces = {f.name: f for f in available_faces()}
    assert {r["name"] for r in pack} <= set(faces)
    for r in pack:
        assert hashlib.sha256((FONT_PACK_DIR / r["file"]).read_bytes()).hexdigest() == r["sha256"], r["name"]
        assert r["license"] and r["name"] in FONT_LICENSES and r["package_sha256"]
        assert (FONT_PACK_DIR / "licenses" / f"{r['package']}.copyright").is_file()
    for face in faces.values():  # DejaVu and Noto too: a declared script is one the cmap really covers
        assert face.scripts and face.scripts <= covered_scripts(face.path, face.index), face.name
        assert any(face.name.startswith(k) or face.name == k for k in FONT_LICENSES), face.name
    cjk = {r["family"] for r in pack if set(r["scripts"]) - {"latin"}}
    assert len(cjk) >= 5
    for script in ("sc", "tc", "jp", "kr"):
        assert sum(script in r["scripts"] for r in pack) >= 2, script
    assert sum(f.stat().st_size for f in FONT_PACK_DIR.rglob("*") if f.is_file()) < 8 * 2**20


def test_script_characters_hold_the_phrase_scripts():
    chars = script_characters()
    assert {"生", "成", "版", "权"} <= chars["sc"] and "견" in chars["kr"] and "サ" in chars["jp"]
    assert {"©", "€", "A"} <= chars["latin"] and not any(c.isspace() for c in chars["latin"])


# --------------------------------------------------------------------------- archives, downloads, copyright


def png_bytes(seed: int, size: tuple[int, int] = (320, 240)) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    base = np.stack([x * 255 // size[0], y * 255 // size[1], (x + y) * 127 // sum(size)], -1)
    noise = rng.integers(0, 60, (8, 8, 3)).repeat(size[1] // 8 + 1, 0).repeat(size[0] // 8 + 1, 1)[: size[1], : size[0]]
    buf = io.BytesIO()
    Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def tar_xz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def ar_archive(members: list[tuple[str, bytes]]) -> bytes:
    out = b"!<arch>\n"
    for name, data in members:
        out += f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode() + data
        out += b"\n" if len(data) % 2 else b""
    return out


def make_deb(path: Path, files: dict[str, bytes]) -> str:
    """Write a minimal Debian binary package with `files` installed; returns its sha256."""
    data = ar_archive([("debian-binary", b"2.0\n"), ("control.tar.xz", tar_xz({"control": b"Package: t\n"})),
                       ("data.tar.xz", tar_xz(files))])  # fmt: skip
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def make_rcc(files: dict[str, bytes]) -> bytes:
    """A version-1 Qt resource bundle: root -> "res" -> files (the second one zlib-compressed)."""
    names, data, tree = b"", b"", []

    def name_offset(name: str) -> int:
        nonlocal names
        offset = len(names)
        names += struct.pack(">HI", len(name), 0) + name.encode("utf-16-be")
        return offset

    tree.append(struct.pack(">IHII", 0, 2, 1, 1))  # root: 1 child at index 1
    tree.append(struct.pack(">IHII", name_offset("res"), 2, len(files), 2))
    for i, (name, body) in enumerate(files.items()):
        flags, stored = (1, struct.pack(">I", len(body)) + zlib.compress(body)) if i % 2 else (0, body)
        tree.append(struct.pack(">IHHHI", name_offset(name), flags, 0, 0, len(data)))
        data += struct.pack(">I", len(stored)) + stored
    tree_bytes = b"".join(tree)
    header = 20
    return b"qres" + struct.pack(">IIII", 1, header, header + len(tree_bytes), header + len(tree_bytes) + len(data)) + tree_bytes + data + names


COPYRIGHT = b"""Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/

Files: *
Copyright: 2020 Someone
License: CC0-1.0

Files: src/pics/special.jpg
Copyright: 2021 Ann Author
 2022 Bob Author
License: CC-BY-4.0
"""


def test_fetch_checks_the_sha256_and_caches(tmp_path):
    deb = tmp_path / "served" / "t_1.0_all.deb"
    deb.parent.mkdir()
    sha = make_deb(deb, {"usr/share/doc/t/copyright": COPYRIGHT})
    cache = tmp_path / "cache"
    got = fetch("t 1.0", [deb.as_uri()], sha, cache)
    assert got == cache / deb.name and got.read_bytes() == deb.read_bytes()
    deb.unlink()  # the cache answers now
    assert fetch("t 1.0", [deb.as_uri()], sha, cache) == got


def test_fetch_refuses_a_mismatch_on_one_line_and_keeps_nothing(tmp_path):
    deb = tmp_path / "t_1.0_all.deb"
    make_deb(deb, {"usr/share/doc/t/copyright": COPYRIGHT})
    with pytest.raises(WmError, match=r"^t 1\.0: sha256 mismatch for file://.*got [0-9a-f]{64}, data/corpus.yaml pins 0{64}$"):
        fetch("t 1.0", [deb.as_uri()], "0" * 64, tmp_path / "cache")
    assert not any((tmp_path / "cache").iterdir())


def test_fetch_names_every_url_that_failed(tmp_path):
    with pytest.raises(WmError, match="no URL answered.*missing.deb"):
        fetch("t 1.0", [(tmp_path / "missing.deb").as_uri()], "0" * 64, tmp_path / "cache")


def test_read_package_takes_globbed_files_and_files_inside_a_qt_bundle(tmp_path):
    rcc = make_rcc({"a.webp": b"plain", "b.webp": b"compressed" * 50})
    assert dict(rcc_files(rcc)) == {"res/a.webp": b"plain", "res/b.webp": b"compressed" * 50}
    deb = tmp_path / "t.deb"
    make_deb(deb, {"usr/share/doc/t/copyright": COPYRIGHT, "usr/share/t/x.jpg": b"x", "usr/share/t/y.txt": b"y",
                   "usr/share/t/bundle.rcc": rcc})  # fmt: skip
    got = read_package(deb, "deb", ["usr/share/t/*.jpg", "usr/share/t/bundle.rcc!res/b.*"], "usr/share/doc/t/copyright")
    assert got.copyright_text == COPYRIGHT.decode()
    assert got.files == {"usr/share/t/x.jpg": b"x", "usr/share/t/bundle.rcc!res/b.webp": b"compressed" * 50}


def make_zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_read_package_takes_files_inside_a_zip_bundle_and_decompresses_only_those(tmp_path):
    pk3 = make_zip({"textures/nature/rock.png": b"rock", "textures/nature/rock_nm.png": b"normals", "maps/a.bsp": b"m"})
    wanted = []
    got = dict(bundle_files(pk3, lambda p: wanted.append(p) or p.endswith("rock.png")))
    assert got == {"textures/nature/rock.png": b"rock"} and len(wanted) == 3
    deb = tmp_path / "t.deb"
    make_deb(deb, {"usr/share/doc/t/copyright": COPYRIGHT, "usr/share/t/base/0tex.pk3": pk3})
    files = read_package(deb, "deb", ["usr/share/t/base/0tex.pk3!textures/**/rock.png"], "usr/share/doc/t/copyright")
    assert files.files == {"usr/share/t/base/0tex.pk3!textures/nature/rock.png": b"rock"}
    with pytest.raises(ValueError, match="not a bundle"):
        list(bundle_files(b"GIF89a..."))


def test_copyright_lookup_names_a_bundled_file_below_the_folder_its_bundle_packs():
    text = COPYRIGHT.decode() + "\nFiles: base/textures/nature/rock.png\nCopyright: 2019 Rock Author\nLicense: public-domain\n"
    copyright = Dep5Copyright(text)
    paragraph, matched = copyright.lookup("usr/share/t/base/0tex.pk3!textures/nature/rock.png")
    assert (paragraph.license, matched) == ("public-domain", "base/textures/nature/rock.png")
    paragraph, matched = copyright.lookup("usr/share/t/other/textures/nature/rock.png")  # not in a bundle: "*"
    assert (paragraph.license, matched) == ("CC0-1.0", "*")


@pytest.mark.parametrize(
    ("path", "pattern", "expected"),
    [("a/b/c.jpg", "a/**/*.jpg", True), ("a/c.jpg", "a/**/*.jpg", True), ("a/b/c.jpg", "a/*.jpg", False),
     ("x/Aqua.jpg", "x/{Aqua,Dune}.jpg", True), ("x/Storm.jpg", "x/{Aqua,Dune}.jpg", False),
     ("p.rcc!g/r/a.webp", "p.rcc!**/a.webp", True)],
)  # fmt: skip
def test_glob_match(path, pattern, expected):
    assert glob_match(path, pattern) is expected


@pytest.mark.parametrize(
    ("path", "license", "pattern"),
    [
        ("usr/share/t/other.png", "CC0-1.0", "*"),
        ("usr/share/t/src/pics/special.jpg", "CC-BY-4.0", "src/pics/special.jpg"),  # a tail of the installed path
        ("usr/share/t/t.rcc!src/pics/special.webp", "CC-BY-4.0", "src/pics/special.jpg"),  # converted in a bundle
        ("usr/share/backgrounds/special.jpg", "CC0-1.0", "*"),  # "*" matches first: no file-name fallback needed
    ],
)
def test_copyright_lookup_last_matching_paragraph_wins(path, license, pattern):
    paragraph, matched = Dep5Copyright(COPYRIGHT.decode()).lookup(path)
    assert (paragraph.license, matched) == (license, pattern)
    if license == "CC-BY-4.0":
        assert paragraph.copyright == "2021 Ann Author and others"


def test_copyright_lookup_falls_back_to_a_unique_file_name():
    text = COPYRIGHT.decode().replace("Files: *\n", "Files: debian/*\n")
    paragraph, matched = Dep5Copyright(text).lookup("usr/share/backgrounds/special.jpg")
    assert (paragraph.license, matched) == ("CC-BY-4.0", "src/pics/special.jpg")
    assert Dep5Copyright("free-form text\n").lookup("a.jpg") is None


# --------------------------------------------------------------------------- views cut from panoramas and atlases


@pytest.mark.parametrize(
    ("size", "crops", "expected"),
    [
        ((2048, 512), {}, [(0, (0, 0, 682, 512)), (1, (683, 0, 1365, 512)), (2, (1366, 0, 2048, 512))]),
        ((1024, 512), {"aspect": 1.0}, [(0, (0, 0, 512, 512)), (1, (512, 0, 1024, 512))]),
        ((256, 1024), {"aspect": 1.0, "region": [0.0, 0.25, 1.0, 1.0], "skip": [1]},  # a vertical atlas
         [(0, (0, 256, 256, 512)), (2, (0, 768, 256, 1024))]),
        ((1000, 400), {"region": [0.0, 0.5, 1.0, 1.0], "views": 4},  # 4 views of 266 px overlap by 6%
         [(0, (0, 200, 266, 400)), (1, (245, 200, 511, 400)), (2, (489, 200, 755, 400)), (3, (734, 200, 1000, 400))]),
        ((512, 512), {}, [(0, (0, 64, 512, 448))]),  # narrower than the aspect: one view, centred
    ],
)  # fmt: skip
def test_view_boxes_spread_views_of_the_aspect_along_the_region(size, crops, expected):
    assert view_boxes(size, CorpusCrops(**crops)) == expected


def test_view_boxes_refuse_views_that_overlap_too_much_or_a_missing_skip():
    with pytest.raises(WmError, match=r"3 views of 500 px along 1000 px share 50% of a view > max_overlap 25%"):
        view_boxes((1000, 500), CorpusCrops(aspect=1.0, views=3))
    assert len(view_boxes((1000, 500), CorpusCrops(aspect=1.0, views=3, max_overlap=0.5))) == 3
    with pytest.raises(WmError, match=r"skip \[5\].*views 0..1 only"):
        view_boxes((1000, 500), CorpusCrops(aspect=1.0, skip=[5]))


@pytest.mark.parametrize(
    ("crops", "message"),
    [({"region": [0.5, 0.0, 0.4, 1.0]}, "left < right"), ({"region": [0.0, 0.0, 1.0]}, "at least 4"),
     ({"skip": [1, 1]}, "distinct"), ({"views": 2, "skip": [2]}, r"only views 0..1"), ({"aspect": 9.0}, "aspect")],
)  # fmt: skip
def test_crops_spec_refuses_a_bad_region_or_skip(crops, message):
    with pytest.raises(ValidationError, match=message):
        CorpusCrops(**crops)


# --------------------------------------------------------------------------- the builder end to end


def tiny_spec(tmp_path: Path, **images) -> CorpusSpec:
    """Two local packages: "tr" (train, 3 pictures) and "te" (test, 2 pictures, one the twin of a train one),
    and a font package holding DejaVu Sans."""
    served = tmp_path / "served"
    served.mkdir(exist_ok=True)
    twin = Image.open(io.BytesIO(png_bytes(1))).resize((300, 225))
    buf = io.BytesIO()
    twin.save(buf, format="JPEG", quality=90)
    tr = {"usr/share/doc/tr/copyright": COPYRIGHT, "usr/share/tr/src/pics/special.jpg": png_bytes(1),
          "usr/share/tr/src/pics/b.png": png_bytes(2), "usr/share/tr/icon.png": png_bytes(3, (32, 32))}
    te = {"usr/share/doc/te/copyright": COPYRIGHT, "usr/share/te/twin.jpg": buf.getvalue(),
          "usr/share/te/page.png": png_bytes(4)}  # fmt: skip
    dejavu = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    fonts = {"usr/share/doc/fonts-t/copyright": b"free-form: Bitstream Vera license\n",
             "usr/share/fonts/t/DejaVuSans.ttf": dejavu.read_bytes()}  # fmt: skip
    pins = {name: make_deb(served / f"{name}.deb", files) for name, files in (("tr", tr), ("te", te), ("fonts-t", fonts))}
    url = lambda n: [(served / f"{n}.deb").as_uri()]  # noqa: E731
    return CorpusSpec.model_validate({
        "images": {"long_side": 256, "min_side": 64, "webp_quality": 60, **images},
        "packages": [
            {"name": "tr", "version": "1", "urls": url("tr"), "sha256": pins["tr"], "split": "train",
             "take": [{"category": "animal", "globs": ["usr/share/tr/**/*.jpg", "usr/share/tr/**/*.png"]}]},
            {"name": "te", "version": "2", "urls": url("te"), "sha256": pins["te"], "split": "test",
             "take": [{"category": "landscape", "globs": ["usr/share/te/twin.jpg"]},
                      {"category": "document", "globs": ["usr/share/te/*.png"], "license": "MIT (spec)"}]},
        ],
        "fonts": {"latin_ranges": ["U+0020-007E"], "cjk_text": "生成"},
        "font_packages": [{"name": "fonts-t", "version": "3", "urls": url("fonts-t"), "sha256": pins["fonts-t"],
                           "license": "Bitstream Vera", "faces": [
                               {"name": "t-sans", "file": "usr/share/fonts/t/DejaVuSans.ttf", "style": "sans",
                                "subset": "latin"}]}],
    })  # fmt: skip


def test_build_corpus_keeps_the_evaluation_twin_and_records_provenance(tmp_path):
    spec = tiny_spec(tmp_path)
    out = tmp_path / "corpus"
    summary = build_corpus(spec, tmp_path / "cache", out)
    manifest = read_jsonl(out / "manifest.jsonl")
    assert {r["file"] for r in manifest} == {"test/te--te-twin.webp", "test/te--te-page.webp", "train/tr--pics-b.webp"}
    assert summary["splits"] == {"train": {"animal": 1}, "val": {}, "test": {"document": 1, "landscape": 1}}
    assert summary["skipped"] == {"too small": 1, "near-duplicate": 1}
    by_file = {r["file"]: r for r in manifest}
    page, twin = by_file["test/te--te-page.webp"], by_file["test/te--te-twin.webp"]
    assert (page["license"], page["page"], page["has_text"]) == ("MIT (spec)", True, True)
    assert (twin["license"], twin["license_basis"]) == ("CC0-1.0", "debian/copyright Files: *")
    for r in manifest:
        stored = out / r["file"]
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == r["sha256"]
        assert max(Image.open(stored).size) <= 256 and r["package_url"].startswith("file://")
    assert sorted(p.name for p in (out / "licenses").iterdir()) == ["te.copyright", "tr.copyright"]
    assert "| test | te | 2 | 2 |" in (out / "README.md").read_text()


def test_build_corpus_refuses_a_corpus_over_its_size_cap(tmp_path):
    spec = tiny_spec(tmp_path, max_mib=0.001)
    with pytest.raises(WmError, match=r"> images.max_mib = 0.001 MiB"):
        build_corpus(spec, tmp_path / "cache", tmp_path / "corpus")
    assert not (tmp_path / "corpus").exists() and not list(tmp_path.glob(".corpus.partial-*"))


def test_build_fonts_subsets_and_measures_scripts(tmp_path):
    spec = tiny_spec(tmp_path)
    summary = build_fonts(spec, tmp_path / "cache", tmp_path / "fonts")
    (row,) = read_jsonl(tmp_path / "fonts" / "manifest.jsonl")
    assert summary["faces"] == 1 and row["scripts"] == ["latin"] and row["family"] == "DejaVu Sans"
    stored = tmp_path / "fonts" / row["file"]
    assert stored.stat().st_size < 100_000 and row["license"] == "Bitstream Vera"
    assert covered_scripts(stored) == {"latin"}


def test_spec_errors_name_the_key(tmp_path):
    path = tmp_path / "corpus.yaml"
    path.write_text(SPEC_PATH.read_text(encoding="utf-8").replace("sha256: e9cf06ab", "sha256: zz", 1), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"packages\.0\.sha256"):
        load_corpus_spec(path)


def noise_png(seed: int, size: tuple[int, int], flat_from: int | None = None) -> bytes:
    """A picture of random 8 px blocks (any two views of it are far apart in difference hash), white from
    column `flat_from` on (a panorama's transparent sky)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    if flat_from is not None:
        pixels[:, flat_from:] = 255
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_build_corpus_stores_each_view_of_a_cropped_panorama_with_its_box(tmp_path):
    spec = tiny_spec(tmp_path)
    pano = {"usr/share/doc/pn/copyright": COPYRIGHT, "usr/share/pn/pano.png": noise_png(7, (960, 240), flat_from=720)}
    sha = make_deb(tmp_path / "served" / "pn.deb", pano)
    tree = spec.model_dump()
    tree["packages"].append({
        "name": "pn", "version": "4", "urls": [(tmp_path / "served" / "pn.deb").as_uri()], "sha256": sha,
        "split": "train", "take": [{"category": "nature", "globs": ["usr/share/pn/*.png"],
                                    "crops": {"aspect": 1.0, "skip": [1]}}],
    })  # fmt: skip
    out = tmp_path / "corpus"
    summary = build_corpus(CorpusSpec.model_validate(tree), tmp_path / "cache", out)
    views = {r["file"]: r for r in read_jsonl(out / "manifest.jsonl") if r["package"] == "pn"}
    assert sorted(views) == ["train/pn--pn-pano-v0.webp", "train/pn--pn-pano-v2.webp"]  # 1 skipped, 3 flat white
    assert [views[f]["crop"] for f in sorted(views)] == [[0, 0, 240, 240], [480, 0, 720, 240]]
    for r in views.values():
        assert (r["path"], r["source_width"], r["source_height"], r["license"]) == ("usr/share/pn/pano.png", 240, 240, "CC0-1.0")
        assert Image.open(out / r["file"]).size == (240, 240)
    assert summary["splits"]["train"] == {"animal": 1, "nature": 2}
    assert summary["skipped"] == {"too small": 1, "near-duplicate": 1, "flat": 1}
    assert all(r["crop"] is None for r in read_jsonl(out / "manifest.jsonl") if r["package"] != "pn")
