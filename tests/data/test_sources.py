"""What prepare reads: the CSV formats (its own, AudioSet's, VGGSound's), with the ways real label cells go wrong
refused on one line naming the file and line, or read right. No video is decoded here."""

from __future__ import annotations

from pathlib import Path

import pytest

from mavil.data import prepare
from mavil.data.sources import SourceError, detect_format, read_sources

CLASS_INDEX = """index,mid,display_name
0,/m/09x0r,"Speech"
1,/m/05zppz,"Male speech, man speaking"
2,/m/0jbk,"Animal"
"""

SEGMENTS = """# Segments csv created Sun Mar  5 10:54:31 2017
# num_ytids=4, num_segs=4, num_unique_labels=3, num_positive_labels=5
# YTID, start_seconds, end_seconds, positive_labels
--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/m/05zppz"
-0RWZT-miFs, 420.000, 430.000, "/m/0jbk"
bbbbbbbbbbb, 0.000, 10.000, "/m/0jbk"
"""


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


def plain(tmp_path: Path, *rows: str, header: str = "path,labels") -> Path:
    return write(tmp_path / "clips.csv", "\n".join([header, *rows]) + "\n")


def test_labels_are_stripped_and_numbered_in_sorted_order(tmp_path):
    listing = read_sources(plain(tmp_path, "a.mp4, dog ; cat ", "b.mp4,cat"))
    assert listing.label_names == ["cat", "dog"]
    assert [(s.name, s.labels) for s in listing.sources] == [("a.mp4", [0, 1]), ("b.mp4", [0])]


@pytest.mark.parametrize(
    "rows, message",
    [
        (
            ['a.mp4,"/m/09x0r,/m/05zppz"'],
            r"line 2: label '/m/09x0r,/m/05zppz' holds a ','; labels are separated by ';'",
        ),
        (["a.mp4,dog,,cat"], r"line 2: 4 fields where the header has 2; quote a cell that holds a ','"),
        (
            ["a.mp4,['dog'; 'cat']"],
            r"line 2: labels \"\['dog'; 'cat'\]\" look like a list literal; write them as dog;cat",
        ),
        (
            ["a.mp4,Cat", "b.mp4,dog", "c.mp4,cat"],
            r"labels 'Cat' \(line 2\) and 'cat' \(line 4\) differ only in case; labels are case-sensitive",
        ),
        (["a.mp4,dog", "b.mp4,", "c.mp4,cat"], r"line 3: no labels for b.mp4 \(other rows have labels"),
        (["a.mp4,dog;;cat"], r"line 2: an empty label in 'dog;;cat'"),
        (["a.mp4,'dog'"], r"line 2: label \"'dog'\" is quoted or bracketed"),
        ([",dog"], r"line 2: no path"),
    ],
)
def test_a_mangled_label_cell_is_refused_naming_the_file_and_line(tmp_path, rows, message):
    table = plain(tmp_path, *rows)
    with pytest.raises(SourceError, match=rf"^{tmp_path / 'clips.csv'}(, |: ).*{message}"):
        read_sources(table)


def test_mids_in_a_plain_csv_with_the_class_index_are_two_classes_in_its_order(tmp_path):
    index = write(tmp_path / "index.csv", CLASS_INDEX)
    listing = read_sources(
        plain(tmp_path, 'a.mp4,"/m/09x0r;Male speech, man speaking"', "b.mp4,Animal"), class_index=index
    )
    assert listing.label_names == ["Speech", "Male speech, man speaking", "Animal"]
    assert listing.label_ids == ["/m/09x0r", "/m/05zppz", "/m/0jbk"]
    assert [s.labels for s in listing.sources] == [[0, 1], [2]]
    with pytest.raises(SourceError, match=r"line 2: label 'Speech, male' is neither a mid nor a display name"):
        read_sources(plain(tmp_path, 'a.mp4,"Speech, male"'), class_index=index)


def test_a_file_listed_three_times_is_one_clip_with_all_its_labels_and_a_warning(tmp_path):
    table = plain(tmp_path, "a.mp4,dog", "b.mp4,cat", "./a.mp4,cat", "sub/../a.mp4,dog")
    listing = read_sources(table)
    assert [(s.name, s.key, s.labels) for s in listing.sources] == [("a.mp4", "a", [0, 1]), ("b.mp4", "b", [0])]
    assert listing.merged == [{"source": "a.mp4", "lines": [2, 4, 5]}]
    assert listing.warnings == [f"{table}: lines 2, 4, 5 list a.mp4: kept once, with the labels of all (cat;dog)"]


def test_an_unlabeled_csv_stays_unlabeled(tmp_path):
    listing = read_sources(plain(tmp_path, "a.mp4,", "b.mp4,"))
    assert listing.label_names == [] and [s.labels for s in listing.sources] == [[], []]


def test_a_byte_order_mark_is_read_and_other_encodings_are_refused_naming_the_file(tmp_path):
    table = write(tmp_path / "clips.csv", "\ufeffpath,labels\na.mp4,dog\n")
    assert read_sources(table).label_names == ["dog"]
    write(tmp_path / "latin.csv", "path,labels\nb.mp4,chien\nc.mp4,caf\u00e9\n", encoding="latin-1")
    with pytest.raises(SourceError, match=rf"^{tmp_path / 'latin.csv'}: not UTF-8 text \(byte 0xe9 on line 3\)"):
        read_sources(tmp_path / "latin.csv")


@pytest.mark.parametrize(
    "text, message",
    [
        ("", r"clips.csv: empty"),
        ("path,labels\n", r"clips.csv: lists no clips \(only a header\)"),
        ("file,label\na.mp4,dog\n", r"clips.csv: needs the columns path,labels; has file,label"),
    ],
)
def test_an_empty_or_headless_csv_is_refused(tmp_path, text, message):
    with pytest.raises(SourceError, match=message):
        read_sources(write(tmp_path / "clips.csv", text))


def test_an_empty_folder_is_refused(tmp_path):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / ".DS_Store").write_text("")
    with pytest.raises(SourceError, match=r"videos: no files in it"):
        read_sources(tmp_path / "videos")


def test_audioset_segments_as_published_with_the_class_index(tmp_path):
    index = write(tmp_path / "class_labels_indices.csv", CLASS_INDEX)
    table = write(tmp_path / "balanced_train_segments.csv", SEGMENTS)
    (tmp_path / "dl" / "sub").mkdir(parents=True)
    for name in ("--PJHxphWEs.mp4", "sub/-0RWZT-miFs.webm", "bbbbbbbbbbb.mkv.part", ".cccccccccc.mp4"):
        (tmp_path / "dl" / name).write_bytes(b"x")
    assert detect_format(table) == "audioset"
    listing = read_sources(table, downloads=tmp_path / "dl", class_index=index)
    assert listing.format == "audioset" and listing.label_names[1] == "Male speech, man speaking"
    got = [(s.key, s.name, s.labels, s.segment, s.path and s.path.name) for s in listing.sources]
    assert got == [
        ("--PJHxphWEs", "--PJHxphWEs,30.000,40.000", [0, 1], (30.0, 40.0), "--PJHxphWEs.mp4"),
        ("-0RWZT-miFs", "-0RWZT-miFs,420.000,430.000", [2], (420.0, 430.0), "-0RWZT-miFs.webm"),
        ("bbbbbbbbbbb", "bbbbbbbbbbb,0.000,10.000", [2], (0.0, 10.0), None),
    ]  # a partial download


@pytest.mark.parametrize(
    "row, message",
    [
        ('x, 1.0, 2.0, ""', r"line 4: no labels for x"),
        ('x, 1.0, 2.0, "/m/09x0r,"', r"line 4: an empty label in '/m/09x0r,'"),
        ('x, 1.0, 2.0, "/m/nope"', r"line 4: label '/m/nope' is neither a mid nor a display name"),
        ('x, 1.0, 2.0, "/M/09X0R"', r"line 4: label '/M/09X0R' is neither"),  # mids are ids: case counts
        ('x, 3.0, 2.0, "/m/09x0r"', r"line 4: a segment needs a YTID and an end after its start"),
        ('x, one, 2.0, "/m/09x0r"', r"line 4: start 'one' is not a number of seconds"),
        ("x, 1.0, 2.0, /m/09x0r, /m/0jbk", r"line 4: 5 fields; an AudioSet segment row is YTID"),
    ],
)
def test_a_broken_audioset_row_is_refused_naming_the_line(tmp_path, row, message):
    index = write(tmp_path / "index.csv", CLASS_INDEX)
    table = write(tmp_path / "seg.csv", "# a\n# b\n# YTID, start_seconds, end_seconds, positive_labels\n" + row + "\n")
    (tmp_path / "dl").mkdir()
    with pytest.raises(SourceError, match=rf"^{table}, {message}"):
        read_sources(table, downloads=tmp_path / "dl", class_index=index)


def test_audioset_needs_its_class_index_and_downloads(tmp_path):
    table = write(tmp_path / "seg.csv", SEGMENTS)
    with pytest.raises(SourceError, match="needs --class-index"):
        read_sources(table, downloads=tmp_path)


def test_vggsound_rows_with_a_split_filter_and_names_sorted_over_all_rows(tmp_path):
    table = write(
        tmp_path / "vggsound.csv",
        "---g-f_I2yQ,1,people marching,test\n--0PQM4-hqg,30,waterfall burbling,"
        'train\n--56QKmJ9vk,0,"cattle, bovinae cowbell",train\n--0PQM4-hqg,30,waterfall burbling,train\n',
    )
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / "--0PQM4-hqg.mp4").write_bytes(b"x")
    assert detect_format(table) == "vggsound"
    listing = read_sources(table, downloads=tmp_path / "dl", split="train")
    assert listing.label_names == ["cattle, bovinae cowbell", "people marching", "waterfall burbling"]
    assert [(s.key, s.labels, s.segment, s.path is not None) for s in listing.sources] == [
        ("--0PQM4-hqg", [2], (30.0, 40.0), True),
        ("--56QKmJ9vk", [0], (0.0, 10.0), False),
    ]
    assert listing.merged == [{"source": "--0PQM4-hqg,30", "lines": [2, 4]}]
    with pytest.raises(SourceError, match=r"no row of split 'val' \(it has test, train\)"):
        read_sources(table, downloads=tmp_path / "dl", split="val")
    write(tmp_path / "case.csv", "a,1,Dog,train\nb,1,dog,train\n")
    with pytest.raises(SourceError, match=r"labels 'Dog' \(line 1\) and 'dog' \(line 2\) differ only in case"):
        read_sources(tmp_path / "case.csv", downloads=tmp_path / "dl")


def test_a_source_error_is_one_line_on_stderr_and_exit_status_2(tmp_path, capsys):
    table = plain(tmp_path, "a.mp4,dog", "b.mp4,dog,,cat")
    assert prepare.main([str(table), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"python -m mavil.data.prepare: error: {table}, line 3: 4 fields where the header has 2; quote a "
        f"cell that holds a ',' (labels are separated by ';')\n"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--clips-per-shard", "0"], "--clips-per-shard must be a whole number of at least 1, not 0"),
        (["--max-duration", "-1"], "--max-duration must be a positive number of seconds, not -1"),
        (["--workers", "0"], "--workers must be a whole number of at least 1, not 0"),
        (["--part", "4/3"], "--part must be K/N with 1 <= K <= N (e.g. 2/8), not '4/3'"),
        (["--out", "FILE"], "FILE: exists and is not a directory; give a directory for --out"),
    ],
)
def test_bad_settings_are_refused_on_one_line(tmp_path, capsys, args, message):
    table = plain(tmp_path, "a.mp4,dog")
    (tmp_path / "FILE").write_text("")
    args = [a.replace("FILE", str(tmp_path / "FILE")) for a in args]
    assert prepare.main([str(table), "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.rstrip().endswith(message.replace("FILE", str(tmp_path / "FILE")))
