"""The prepared dataset's split names and the image files each reader takes: one home for each.

`wm prepare` writes <paths.prepared>/<split>/{images,masks}; training, evaluation, `wm predict` and
the dataset importer read files by suffix. The suffix sets differ on purpose, by what reads them,
and are built from each other so that they cannot drift apart.
"""

from __future__ import annotations

# The style-held-out test split (fonts, phrase kinds, styles and backgrounds training never saw);
# optional: absent when `wm prepare` did not make it.
HELDOUT_SPLIT = "test_heldout"

# Images of a prepared split (what `wm prepare` writes; what evaluation reads).
PREPARED_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# Photos Pillow decodes by itself: background folders and the image folders of an imported dataset.
PHOTO_SUFFIXES = (*PREPARED_IMAGE_SUFFIXES, ".bmp", ".tif", ".tiff", ".gif")
# What inference reads from a folder: also phone photos (HEIC/HEIF through pillow-heif) and AVIF; files
# named on the command line are tried whatever their suffix.
INPUT_SUFFIXES = frozenset({*PHOTO_SUFFIXES, ".heic", ".heif", ".hif", ".avif"})
