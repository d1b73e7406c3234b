"""Reads MS-COCO-style caption files (STAIR Captions v1.2, YJ Captions 26k) and finds their photos.

Both datasets are JSON objects with ``images`` (``id``, ``file_name`` such as
``COCO_train2014_000000123456.jpg``) and ``annotations`` (``image_id``, a
Japanese ``caption``). YJ Captions may leave ``file_name`` out; the photo is
then found by the COCO 2014 name of its id.

A ``file_name`` is only ever looked up among the files the given image folders
list, so an annotation file cannot make the program read anything else.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath

from fileio import read_json

MAX_ANNOTATION_BYTES = 512 * 2**20  # STAIR v1.2's training file is about a tenth of this
MAX_CAPTION_CHARS = 200  # a caption is cut to this before anything else reads it (a katakana reading is at most 49)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclasses.dataclass
class ImageRecord:
    """One photo and all its captions.

    Attributes:
        path: the image file, inside one of the image folders.
        captions: the Japanese captions from every annotation file.
        image_id: the COCO id of the first annotation file that named it.
        scene: what the demo generator drew (``None`` for real datasets).
    """

    path: Path
    captions: list[str]
    image_id: int | str
    scene: list | None = None


@dataclasses.dataclass
class LoadReport:
    """What loading skipped, counted by reason."""

    num_annotations: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    noticed: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # odd, but used

    def lines(self) -> list[str]:
        return ([f"skipped {count} {reason}" for reason, count in sorted(self.skipped.items())]
                + [f"note: {count} {reason}" for reason, count in sorted(self.noticed.items())])


def index_image_folders(image_dirs) -> dict[str, Path]:
    """Maps each file name found directly in ``image_dirs`` to its path (the first folder wins)."""
    files: dict[str, Path] = {}
    for folder in image_dirs:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"Image folder not found: {folder}")
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
                    files.setdefault(entry.name, Path(entry.path))
    return files


def is_safe_file_name(file_name: str) -> bool:
    """False for names that are absolute or climb out of a folder (``../x``, ``C:\\x``)."""
    for pure in (PurePosixPath(file_name), PureWindowsPath(file_name)):
        if pure.is_absolute() or pure.anchor or ".." in pure.parts:
            return False
    return bool(file_name) and "\x00" not in file_name


def _is_id(value) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _coco_names(image_id) -> list[str]:
    try:
        number = int(image_id)
    except (TypeError, ValueError):
        return []
    return [f"COCO_{split}2014_{number:012d}.jpg" for split in ("train", "val")]


def _check_shape(data, path) -> None:
    hint = 'expected a COCO caption file: {"images": [...], "annotations": [{"image_id": ..., "caption": ...}]}'
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{path} is not a caption file: {hint}")
    if "images" in data and not isinstance(data["images"], list):
        raise ValueError(f'{path}: "images" is not a list; {hint}')


def load_caption_files(annotation_files, image_dirs) -> tuple[list[ImageRecord], LoadReport]:
    """Loads captions from COCO-style JSON files and pairs them with image files.

    Args:
        annotation_files: paths of STAIR/YJ/COCO caption JSON files.
        image_dirs: folders holding the photos (``train2014/``, ``val2014/``).

    Returns:
        ``(records, report)``: one record per photo that was found and has at
        least one non-empty caption, in a stable order, and what was skipped.

    Raises:
        FileNotFoundError: an annotation file or image folder does not exist.
        ValueError: an annotation file is not JSON, or not caption-shaped.
    """
    files = index_image_folders(image_dirs)
    report = LoadReport()
    records: dict[Path, ImageRecord] = {}
    seen_files = set()
    for annotation_file in annotation_files:
        identity = Path(annotation_file).resolve()
        if identity in seen_files:
            report.skipped["annotation files given twice (read once)"] += 1
            continue
        seen_files.add(identity)
        data = read_json(annotation_file, "Annotation file", MAX_ANNOTATION_BYTES)
        _check_shape(data, annotation_file)
        images = {}
        for image in data.get("images", []):
            if not isinstance(image, dict) or not _is_id(image.get("id")):
                report.skipped["images entries without a number or string id"] += 1
            elif image["id"] in images:
                if images[image["id"]].get("file_name") != image.get("file_name"):
                    report.skipped["images entries whose id another entry with another file_name has "
                                   "(the first is kept)"] += 1
            else:
                images[image["id"]] = image
        for annotation in data["annotations"]:
            report.num_annotations += 1
            if not isinstance(annotation, dict) or not _is_id(annotation.get("image_id")):
                report.skipped["annotations without a number or string image_id"] += 1
                continue
            caption = annotation.get("caption")
            if not isinstance(caption, str) or not caption.strip():
                report.skipped["empty captions"] += 1
                continue
            if len(caption) > MAX_CAPTION_CHARS:
                report.noticed[f"captions over {MAX_CAPTION_CHARS} characters, cut to that"] += 1
                caption = caption[:MAX_CAPTION_CHARS]
            image_id = annotation["image_id"]
            image = images.get(image_id, {})
            file_name = image.get("file_name")
            if file_name is not None:
                if not isinstance(file_name, str):
                    report.skipped["annotations whose file_name is not a string"] += 1
                    continue
                if not is_safe_file_name(file_name):
                    report.skipped["annotations whose file_name leaves the image folder"] += 1
                    continue
                candidates = [PurePath(PurePosixPath(file_name).name).name]
            else:
                candidates = _coco_names(image_id)
            path = next((files[name] for name in candidates if name in files), None)
            if path is None:
                report.skipped["annotations whose image file is missing"] += 1
                continue
            record = records.get(path)
            if record is None:
                record = records[path] = ImageRecord(path, [], image_id, image.get("scene"))
            record.captions.append(caption.strip())
    return list(records.values()), report


def find_images(inputs) -> tuple[list[Path], list[str]]:
    """Files as given, and the images directly inside given folders (sorted); returns ``(paths, problems)``."""
    paths, problems = [], []
    for item in inputs:
        path = Path(item)
        if not str(item).strip():
            problems.append("an empty path was given (an unset shell variable?)")
        elif path.is_dir():
            paths.extend(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            paths.append(path)
        elif path.exists():
            problems.append(f"{path}: not a regular file")
        else:
            problems.append(f"{path}: file not found")
    return paths, problems
