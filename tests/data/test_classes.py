"""Class names: validation, the classes file, and matching ImageFolder sub-folders to classes."""

from __future__ import annotations

import pytest

from air_app.data.classes import match_folders, normalise_name, read_classes_file, validate_classes
from air_app.errors import UserError


# ---------------------------------------------------------------------------------------------- normalisation
@pytest.mark.parametrize("raw, key", [
    ("Red_Circle", "red circle"), ("red circle", "red circle"), ("  RED--circle ", "red circle"),
    ("red\tcircle", "red circle"), ("Straße", "strasse"), ("ｆｕｌｌ", "full"), ("a_-_b", "a b"),
])
def test_normalise_name(raw, key):
    assert normalise_name(raw) == key


# ------------------------------------------------------------------------------------------------- validation
def test_validate_strips_and_collapses_spaces():
    assert validate_classes(["  cat ", "golden   retriever", "sun\tflower"]) == ["cat", "golden retriever",
                                                                               "sun flower"]


def test_validate_accepts_generators_and_non_strings():
    assert validate_classes(str(i) for i in range(3)) == ["0", "1", "2"]
    assert validate_classes([1, 2]) == ["1", "2"]


def test_validate_empty():
    with pytest.raises(UserError, match="class list is empty"):
        validate_classes([])


def test_validate_one_class():
    with pytest.raises(UserError) as info:
        validate_classes(["cat"], source="my list")
    assert str(info.value) == "my list has only one class ('cat'); classification needs at least two"


def test_validate_blank_names():
    with pytest.raises(UserError) as info:
        validate_classes(["cat", " ", "dog", ""])
    assert "blank class names (entries 2, 4)" in str(info.value)


@pytest.mark.parametrize("names, dup, first", [
    (["cat", "dog", "cat"], "cat", "cat"),
    (["Cat", "cat"], "cat", "Cat"),
    (["Red_Circle", "blue", "red circle"], "red circle", "Red_Circle"),
    (["red-circle", "Red Circle"], "Red Circle", "red-circle"),
    (["a  b", "a b"], "a b", "a b"),
])
def test_validate_duplicates(names, dup, first):
    with pytest.raises(UserError) as info:
        validate_classes(names)
    msg = str(info.value)
    assert f"lists the class {dup!r} twice (also as {first!r})" in msg and "unique" in msg


# ------------------------------------------------------------------------------------------------ classes file
def test_read_classes_file_basic(tmp_path):
    p = tmp_path / "classes.txt"
    p.write_text("# my classes\ncat\n  golden retriever  \n# a comment in between\nsunflower\n\n\n", encoding="utf-8")
    assert read_classes_file(p) == ["cat", "golden retriever", "sunflower"]


def test_read_classes_file_bom_and_crlf(tmp_path):
    p = tmp_path / "classes.txt"
    p.write_bytes("\ufeffcafé\r\nnaïve bayes\r\n".encode("utf-8"))
    assert read_classes_file(p) == ["café", "naïve bayes"]


def test_read_classes_file_comment_after_trailing_blank(tmp_path):
    p = tmp_path / "classes.txt"
    p.write_text("cat\ndog\n\n# end of list\n", encoding="utf-8")
    assert read_classes_file(p) == ["cat", "dog"]


def test_read_classes_file_blank_line_in_the_middle(tmp_path):
    p = tmp_path / "classes.txt"
    p.write_text("cat\n\ndog\n", encoding="utf-8")
    with pytest.raises(UserError, match="blank class names"):
        read_classes_file(p)


def test_read_classes_file_missing(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_classes_file(tmp_path / "nope.txt")
    (tmp_path / "dir.txt").mkdir()
    with pytest.raises(UserError, match="does not exist"):
        read_classes_file(tmp_path / "dir.txt")


@pytest.mark.parametrize("content", ["", "\n\n  \n", "# only\n# comments\n", "\ufeff"])
def test_read_classes_file_empty(tmp_path, content):
    p = tmp_path / "classes.txt"
    p.write_text(content, encoding="utf-8")
    with pytest.raises(UserError) as info:
        read_classes_file(p)
    assert "is empty: write one class name per line" in str(info.value)
    assert str(p) in str(info.value)


def test_read_classes_file_not_utf8(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes("café\nthé\n".encode("latin-1"))
    with pytest.raises(UserError, match="is not UTF-8 text"):
        read_classes_file(p)


def test_read_classes_file_binary(tmp_path):
    p = tmp_path / "bin.txt"
    p.write_bytes(bytes(range(128, 256)))
    with pytest.raises(UserError, match="not UTF-8"):
        read_classes_file(p)


def test_read_classes_file_validates(tmp_path):
    p = tmp_path / "classes.txt"
    p.write_text("Red_Circle\nred circle\n", encoding="utf-8")
    with pytest.raises(UserError) as info:
        read_classes_file(p)
    assert f"classes file {p} lists the class 'red circle' twice" in str(info.value)
    p.write_text("onlyone\n", encoding="utf-8")
    with pytest.raises(UserError, match="only one class"):
        read_classes_file(p)


# ---------------------------------------------------------------------------------------------- folder matching
def test_match_folders_normalised():
    classes = ["red circle", "Blue Square", "green-triangle"]
    mapping = match_folders(["Red_Circle", "blue_square", "GREEN TRIANGLE"], classes)
    assert mapping == {"Red_Circle": 0, "blue_square": 1, "GREEN TRIANGLE": 2}


def test_match_folders_subset_is_fine():
    assert match_folders(["b"], ["a", "b", "c"]) == {"b": 1}
    assert match_folders([], ["a", "b"]) == {}


def test_match_folders_unknown_listed():
    with pytest.raises(UserError) as info:
        match_folders(["cat", "zebra", "unicorn"], ["cat", "dog"])
    msg = str(info.value)
    assert "'zebra', 'unicorn'" in msg and "match no class name" in msg and "known: cat, dog" in msg
    assert "'cat'" not in msg.split("match no")[0]


def test_match_folders_many_unknown_truncated():
    folders = [f"f{i}" for i in range(7)]
    classes = [f"c{i}" for i in range(8)]
    with pytest.raises(UserError) as info:
        match_folders(folders, classes)
    msg = str(info.value)
    assert "'f0', 'f1', 'f2', 'f3', 'f4'..." in msg and "'f5'" not in msg
    assert "known: c0, c1, c2, c3, c4..." in msg
