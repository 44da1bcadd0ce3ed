"""What `prepare` reads: which files become which clips, with which labels, in four formats.

  folder     every file below it whose name does not start with '.', recursively, in sorted order; no labels
  csv        header `path,labels`, labels separated by ';' (--class-index gives their names' order)
  audioset   AudioSet's segment CSVs and class index as published, a folder of downloads named by YTID
  vggsound   VGGSound's CSV as published, a folder of downloads named by YTID; --split keeps one split

A broken rule (empty or list-literal labels, labels differing only in case, ...) is a `SourceError`, one line
naming the file and line; a file listed twice becomes one clip with both rows' labels; a download that is not there
is listed as missing. The rules, and when a download counts as the whole video: docs/prepare.md.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

FORMATS = ("folder", "csv", "audioset", "vggsound")
VGGSOUND_SECONDS = 10.0
MAX_KEY = 80  # characters: a tar member name (key + extension) must fit USTAR's 100
PARTIAL_DOWNLOADS = (".part", ".ytdl", ".temp", ".tmp")  # what downloaders leave behind while they work
QUOTES = " '\""
YTID = re.compile(r"[A-Za-z0-9_-]+")


class SourceError(ValueError):
    """A source list that cannot be prepared as written; the message is one line naming the file and line."""


@dataclass(frozen=True)
class Source:
    path: Path | None  # None: a download that is not there
    key: str
    name: str  # the path as the user gave it (below SRC, or as written in the CSV), or "YTID,start,end"
    labels: list[int] = field(default_factory=list)
    segment: tuple[float, float] | None = None  # [start, end) seconds of the full video


@dataclass
class SourceList:
    format: str
    sources: list[Source]  # every row, missing downloads included (keys and parts do not depend on downloads)
    label_names: list[str]
    label_ids: list[str] = field(default_factory=list)  # AudioSet mids, in label_names' order
    merged: list[dict] = field(default_factory=list)  # {"source", "lines"} of each source listed more than once
    warnings: list[str] = field(default_factory=list)

    def fingerprint(self) -> str:
        """sha256 of what decides the output (names, keys, labels, segments, label names): not where files lie."""
        digest = hashlib.sha256(json.dumps([self.format, self.label_names, self.label_ids]).encode())
        for s in self.sources:  # row by row: 2M rows are one pass, not one 200-MB string
            digest.update(json.dumps([s.name, s.key, s.labels, s.segment], separators=(",", ":")).encode())
        return digest.hexdigest()


# keys
def key_base(name: str) -> str:
    """The extension dropped, runs of characters other than [A-Za-z0-9_-] replaced by '_', the last MAX_KEY kept."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", str(Path(name).with_suffix("")))[-MAX_KEY:].strip("_-") or "clip"


def unique_keys(bases: list[str]) -> list[str]:
    """Each base, made unique in order with a suffix -2, -3, ..."""
    keys, used = [], set()
    for base in bases:
        key, n = base, 1
        while key in used:
            n += 1
            key = f"{base}-{n}"
        used.add(key)
        keys.append(key)
    return keys


def sanitised_keys(names: list[str]) -> list[str]:
    return unique_keys([key_base(name) for name in names])


def ytid_keys(ytids: list[str]) -> list[str]:
    """A YouTube id is a key as it is (leading '-' kept), made unique where one video gives several segments."""
    return unique_keys([y[-MAX_KEY:] if YTID.fullmatch(y) else key_base(y) for y in ytids])


# reading CSV text
def read_rows(table: Path, comments: bool = False, skip_space: bool = False) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) of each non-blank row (and, with `comments`, not starting with '#'). UTF-8 with or without
    a byte-order mark; other encodings are refused naming the file."""
    try:
        with open(table, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, skipinitialspace=skip_space)
            for row in reader:
                if not any(cell.strip() for cell in row) or (comments and row[0].lstrip().startswith("#")):
                    continue
                yield reader.line_num, row
    except UnicodeDecodeError:
        raise SourceError(f"{table}: not UTF-8 text ({not_utf8(table)}); save it as UTF-8") from None
    except csv.Error as error:
        raise SourceError(f"{table}: not a CSV file ({error})") from None


def not_utf8(table: Path) -> str:
    """Where a file stops being UTF-8: 'byte 0xe9 on line 3'."""
    data = table.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        return f"byte 0x{data[error.start]:02x} on line {data[: error.start].count(10) + 1}"
    return "invalid UTF-8"


def first_line(table: Path) -> str:
    with open(table, encoding="utf-8-sig", errors="replace") as f:
        for line in f:
            if line.strip():
                return line.strip()
    return ""


def detect_format(src: Path) -> str:
    """folder, or, for a .csv: audioset (a '#' first line), vggsound (no header, 4 fields, split train or test), csv."""
    if src.is_dir():
        return "folder"
    line = first_line(src)
    if line.startswith("#"):
        return "audioset"
    cells = next(csv.reader([line]), [])
    if len(cells) == 4 and cells[3].strip() in ("train", "test") and "path" not in cells:
        return "vggsound"
    return "csv"


# labels
def split_labels(table: Path, line: int, cell: str, separator: str) -> list[str]:
    """A cell's labels, stripped; SourceError for an empty one or a list literal."""
    text = cell.strip()
    if text[:1] in "[({" and text[-1:] in "])}" and text:
        names = [name.strip(QUOTES) for name in re.split("[,;]", text[1:-1])]
        raise SourceError(
            f"{table}, line {line}: labels {text!r} look like a list literal; write them as {separator.join(names)}"
        )
    labels = [label.strip() for label in text.split(separator)]
    for label in labels:
        if not label:
            raise SourceError(
                f"{table}, line {line}: an empty label in {text!r} (labels are separated by "
                f"{separator!r}, each non-empty)"
            )
        if label[0] in "'\"[" or label[-1] in "'\"]":
            raise SourceError(f"{table}, line {line}: label {label!r} is quoted or bracketed; write the bare name")
    return labels


def check_case(table: Path, first_seen: dict[str, int]) -> None:
    """SourceError when two label names differ only in case (`first_seen`: name -> line of first use)."""
    folded: dict[str, str] = {}
    for name in sorted(first_seen, key=first_seen.get):
        other = folded.setdefault(name.casefold(), name)
        if other != name:
            raise SourceError(
                f"{table}: labels {other!r} (line {first_seen[other]}) and {name!r} (line "
                f"{first_seen[name]}) differ only in case; labels are case-sensitive: write one spelling"
            )


def read_class_index(path: Path) -> tuple[list[str], list[str]]:
    """(mids, display names) in index order from AudioSet's class_labels_indices.csv (`index,mid,display_name`)."""
    rows = list(read_rows(path))
    if not rows or [c.strip() for c in rows[0][1]] != ["index", "mid", "display_name"]:
        raise SourceError(f"{path}: not a class index (the header must be index,mid,display_name)")
    mids, names = [], []
    for line, row in rows[1:]:
        if len(row) != 3 or row[0].strip() != str(len(mids)) or not row[1].strip() or not row[2].strip():
            raise SourceError(f"{path}, line {line}: expected {len(mids)},mid,display_name; got {','.join(row)}")
        if row[1].strip() in mids:
            raise SourceError(f"{path}, line {line}: mid {row[1].strip()} listed twice")
        mids.append(row[1].strip())
        names.append(row[2].strip())
    if not mids:
        raise SourceError(f"{path}: lists no classes")
    return mids, names


def number_labels(
    table: Path, rows: list[tuple[int, list[str]]], class_index: Path | None, check_letter_case: bool
) -> tuple[list[list[int]], list[str], list[str]]:
    """Each row's label names as sorted class numbers, the label names and (with a class index) the mids."""
    if class_index is not None:
        mids, names = read_class_index(class_index)
        number = {name: i for i, name in enumerate(names)} | {mid: i for i, mid in enumerate(mids)}
        for line, labels in rows:
            for label in labels:
                if label not in number:
                    raise SourceError(
                        f"{table}, line {line}: label {label!r} is neither a mid nor a display name of {class_index}"
                    )
        return [sorted({number[n] for n in labels}) for _, labels in rows], names, mids
    first_seen: dict[str, int] = {}
    for line, labels in rows:
        for label in labels:
            first_seen.setdefault(label, line)
    if check_letter_case:
        check_case(table, first_seen)
    names = sorted(first_seen)
    number = {name: i for i, name in enumerate(names)}
    return [sorted({number[n] for n in labels}) for _, labels in rows], names, []


def merge_duplicates(
    identities: list, lines: list[int], labels: list[list[int]]
) -> tuple[list[int], list[list[int]], list[list[int]]]:
    """Rows with the same identity as one: (first row of each, the union of their labels, the lines of each)."""
    first: dict = {}
    for row, identity in enumerate(identities):
        first.setdefault(identity, row)
    rows = sorted(first.values())
    union = {row: set() for row in rows}
    where = {row: [] for row in rows}
    for row, identity in enumerate(identities):
        union[first[identity]].update(labels[row])
        where[first[identity]].append(lines[row])
    return rows, [sorted(union[row]) for row in rows], [where[row] for row in rows]


def duplicate_notes(
    table: Path, names: list[str], lines: list[list[int]], label_names: list[str], labels: list[list[int]]
) -> tuple[list[dict], list[str]]:
    merged, warnings = [], []
    for name, where, numbers in zip(names, lines, labels):
        if len(where) > 1:
            merged.append({"source": name, "lines": where})
            shown = ";".join(label_names[n] for n in numbers) or "none"
            warnings.append(
                f"{table}: lines {', '.join(map(str, where))} list {name}: kept once, with the labels of all ({shown})"
            )
    return merged, warnings


# the formats
def folder_sources(root: Path) -> SourceList:
    names = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not names:
        raise SourceError(f"{root}: no files in it (names starting with '.' are ignored)")
    return SourceList("folder", [Source(root / n, k, n) for n, k in zip(names, sanitised_keys(names))], [])


def below_common_folder(paths: list[Path]) -> list[str]:
    """Each path relative to the deepest folder that holds them all (a CSV's absolute paths -> short keys)."""
    absolute = [os.path.abspath(p) for p in paths]
    common = os.path.commonpath([os.path.dirname(p) for p in absolute]) if absolute else ""
    return [os.path.relpath(p, common) for p in absolute]


def csv_sources(table: Path, class_index: Path | None = None) -> SourceList:
    rows = list(read_rows(table))
    if not rows:
        raise SourceError(f"{table}: empty (needs a header path,labels and a row per clip)")
    header = [cell.strip() for cell in rows[0][1]]
    if not {"path", "labels"} <= set(header):
        raise SourceError(f"{table}: needs the columns path,labels; has {','.join(header)}")
    if len(rows) == 1:
        raise SourceError(f"{table}: lists no clips (only a header)")
    path_col, labels_col = header.index("path"), header.index("labels")
    names, cells, lines = [], [], []
    for line, row in rows[1:]:
        if len(row) != len(header):
            raise SourceError(
                f"{table}, line {line}: {len(row)} fields where the header has {len(header)}; quote a "
                f"cell that holds a ',' (labels are separated by ';')"
            )
        if not row[path_col].strip():
            raise SourceError(f"{table}, line {line}: no path")
        names.append(row[path_col].strip())
        cells.append(row[labels_col].strip())
        lines.append(line)
    labeled = class_index is not None or any(cells)
    row_labels = []
    for line, name, cell in zip(lines, names, cells):
        if labeled and not cell:
            raise SourceError(
                f"{table}, line {line}: no labels for {name} (other rows have labels: in a labeled set "
                f"every clip needs one)"
            )
        labels = split_labels(table, line, cell, ";") if cell else []
        if class_index is None and any("," in label for label in labels):
            raise SourceError(
                f"{table}, line {line}: label {next(n for n in labels if ',' in n)!r} holds a ','; "
                f"labels are separated by ';' (a class name with a ',' needs --class-index)"
            )
        row_labels.append((line, labels))
    numbers, label_names, label_ids = number_labels(table, row_labels, class_index, check_letter_case=True)
    paths = [table.parent / name for name in names]  # absolute names stay absolute
    keep, labels, where = merge_duplicates([os.path.normpath(os.path.abspath(p)) for p in paths], lines, numbers)
    names, paths = [names[i] for i in keep], [paths[i] for i in keep]
    merged, warnings = duplicate_notes(table, names, where, label_names, labels)
    keys = sanitised_keys(below_common_folder(paths))
    sources = [Source(p, k, n, ls) for p, k, n, ls in zip(paths, keys, names, labels)]
    return SourceList("csv", sources, label_names, label_ids, merged, warnings)


def download_index(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """YTID (a file name up to its first '.') -> the file, for every file below `folder` but hidden and partial
    downloads; the first in sorted order where several share a YTID (and a warning)."""
    if not folder.is_dir():
        raise SourceError(f"{folder}: the downloads folder does not exist")
    files: dict[str, Path] = {}
    doubles: list[str] = []
    for directory, subdirs, names in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith(".") or name.endswith(PARTIAL_DOWNLOADS):
                continue
            ytid = name.partition(".")[0]
            if ytid in files:
                doubles.append(f"{folder}: several downloads of {ytid}; using {files[ytid].relative_to(folder)}")
            else:
                files[ytid] = Path(directory) / name
    return files, doubles


def segment_sources(
    fmt: str,
    table: Path,
    downloads: Path,
    rows: list[tuple[int, str, str, float, float, list[str]]],
    class_index: Path | None,
    keep_row: list[bool],
) -> SourceList:
    """rows: (line, ytid, name, start, end, labels) -> sources; only rows with keep_row count (label names are made
    from every row)."""
    numbers, label_names, label_ids = number_labels(
        table, [(r[0], r[5]) for r in rows], class_index, check_letter_case=class_index is None
    )
    rows = [(*row[:5], labels) for row, labels, keep in zip(rows, numbers, keep_row) if keep]
    keep, labels, where = merge_duplicates(
        [(r[1], r[3], r[4]) for r in rows], [r[0] for r in rows], [r[5] for r in rows]
    )
    rows = [rows[i] for i in keep]
    merged, warnings = duplicate_notes(table, [r[2] for r in rows], where, label_names, labels)
    files, doubles = download_index(downloads)
    keys = ytid_keys([r[1] for r in rows])
    sources = [
        Source(files.get(ytid), key, name, ls, (start, end))
        for (_, ytid, name, start, end, _), key, ls in zip(rows, keys, labels)
    ]
    return SourceList(fmt, sources, label_names, label_ids, merged, warnings + doubles)


def seconds(table: Path, line: int, text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        raise SourceError(f"{table}, line {line}: {what} {text!r} is not a number of seconds")
    return value


def audioset_sources(table: Path, downloads: Path | None, class_index: Path | None) -> SourceList:
    if class_index is None or downloads is None:
        raise SourceError(
            f"{table}: an AudioSet segment CSV needs --class-index (class_labels_indices.csv) and "
            f"--downloads (the folder of downloaded videos)"
        )
    rows = []
    for line, row in read_rows(table, comments=True, skip_space=True):
        if len(row) != 4:
            raise SourceError(
                f"{table}, line {line}: {len(row)} fields; an AudioSet segment row is YTID, "
                f'start_seconds, end_seconds, "mid,mid"'
            )
        ytid, start_text, end_text, cell = (cell.strip() for cell in row)
        start, end = seconds(table, line, start_text, "start"), seconds(table, line, end_text, "end")
        if not ytid or end <= start:
            raise SourceError(f"{table}, line {line}: a segment needs a YTID and an end after its start")
        if not cell:
            raise SourceError(f"{table}, line {line}: no labels for {ytid}")
        rows.append((line, ytid, f"{ytid},{start_text},{end_text}", start, end, split_labels(table, line, cell, ",")))
    if not rows:
        raise SourceError(f"{table}: lists no segments")
    return segment_sources("audioset", table, downloads, rows, class_index, [True] * len(rows))


def vggsound_sources(table: Path, downloads: Path | None, split: str | None) -> SourceList:
    if downloads is None:
        raise SourceError(f"{table}: a VGGSound CSV needs --downloads (the folder of downloaded videos)")
    rows, splits = [], []
    for line, row in read_rows(table):
        if len(row) != 4:
            raise SourceError(f"{table}, line {line}: {len(row)} fields; a VGGSound row is ytid,start,label,split")
        ytid, start_text, label, row_split = (cell.strip() for cell in row)
        start = seconds(table, line, start_text, "start")
        if not ytid or not label:
            raise SourceError(f"{table}, line {line}: no {'ytid' if not ytid else 'label'}")
        split_labels(table, line, label, "\n")  # checks the one label (VGGSound's names may hold a ',')
        rows.append((line, ytid, f"{ytid},{start_text}", start, start + VGGSOUND_SECONDS, [label]))
        splits.append(row_split)
    if not rows:
        raise SourceError(f"{table}: lists no segments")
    if split is not None and split not in splits:
        raise SourceError(f"{table}: no row of split {split!r} (it has {', '.join(sorted(set(splits)))})")
    return segment_sources("vggsound", table, downloads, rows, None, [split in (None, s) for s in splits])


def read_sources(
    src: Path,
    fmt: str | None = None,
    downloads: Path | None = None,
    class_index: Path | None = None,
    split: str | None = None,
) -> SourceList:
    """The sources of `src` in format `fmt` (None: detected, see `detect_format`)."""
    if not src.exists():
        raise SourceError(f"{src}: no such file or folder")
    if not src.is_dir() and not (src.is_file() and src.suffix.lower() == ".csv"):
        raise SourceError(f"{src}: neither a folder of videos nor a .csv file")
    fmt = fmt or detect_format(src)
    if (fmt == "folder") != src.is_dir():
        raise SourceError(f"{src}: format {fmt} needs {'a folder' if fmt == 'folder' else 'a .csv file'}")
    if split is not None and fmt != "vggsound":
        raise SourceError(f"{src}: --split is for VGGSound's CSV; this is read as {fmt}")
    if downloads is not None and fmt not in ("audioset", "vggsound"):
        raise SourceError(f"{src}: --downloads is for AudioSet's and VGGSound's CSVs; this is read as {fmt}")
    if fmt == "folder":
        return folder_sources(src)
    if fmt == "csv":
        return csv_sources(src, class_index)
    if fmt == "audioset":
        return audioset_sources(src, downloads, class_index)
    if class_index is not None:
        raise SourceError(f"{src}: --class-index is for AudioSet's and plain CSVs; VGGSound's names are sorted")
    return vggsound_sources(src, downloads, split)
