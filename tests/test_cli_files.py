"""cli.files: a named input file is read whole or refused in one line, never more than the limit."""

from __future__ import annotations

import os

import pytest

from cli.errors import CoInferError
from cli.files import read_json, read_text


def test_reads_a_json_file(tmp_path) -> None:
    (tmp_path / "p.json").write_text('{"a": [1, 2]}')
    assert read_json(tmp_path / "p.json", "profile") == {"a": [1, 2]}


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe\x00", "profile {p} is not UTF-8 text"),
    (b'{"a": 1,\n', "profile {p} is not valid JSON (line 2)"),
    (b"[" * 100_000 + b"]" * 100_000, "profile {p} nests too deeply"),
])
def test_bad_contents_are_one_line(tmp_path, content: bytes, message: str) -> None:
    path = tmp_path / "p.json"
    path.write_bytes(content)
    with pytest.raises(CoInferError) as exc:
        read_json(path, "profile")
    assert str(exc.value) == message.format(p=path)


def test_missing_fifo_and_directory_are_refused_without_reading(tmp_path) -> None:
    with pytest.raises(CoInferError, match=r"^cannot read profile .*missing\.json: No such file or directory$"):
        read_json(tmp_path / "missing.json", "profile")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # reading it would block for ever
    with pytest.raises(CoInferError, match=r"fifo is not a regular file$"):
        read_json(fifo, "profile")
    with pytest.raises(CoInferError, match=r"is not a regular file$"):
        read_json(tmp_path, "profile")


def test_size_limit_is_checked_before_reading(tmp_path) -> None:
    path = tmp_path / "big.json"
    path.write_text(" " * 1001)
    with pytest.raises(CoInferError, match=r"big\.json is 1001 bytes, over the limit of 1000$"):
        read_text(path, "table", max_bytes=1000)
    assert read_text(path, "table", max_bytes=1001) == " " * 1001


@pytest.mark.parametrize("name, text", [("p.json", '{"a": ' + "9" * 5000 + "}"), ("p.yml", "a: " + "9" * 5000 + "\n")])
def test_a_number_over_pythons_digit_limit_is_one_line(tmp_path, name: str, text: str) -> None:
    from cli.files import read_yaml
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(CoInferError) as exc:
        read_json(path, "profile") if name.endswith(".json") else read_yaml(path, "profile", 2**20)
    assert str(exc.value) == f"profile {path}: exceeds the limit (4300 digits) for integer string conversion"


def test_an_output_that_is_a_fifo_is_refused_and_left_alone(tmp_path) -> None:
    from cli.files import check_output
    fifo = tmp_path / "out.csv"
    os.mkfifo(fifo)  # a rename over it would replace the node (over /dev/null, the device)
    with pytest.raises(CoInferError, match=r"out\.csv exists and is not a regular file$"):
        check_output(fifo, "export")
    assert fifo.is_fifo()
    assert check_output(tmp_path / "new.csv", "export") == (tmp_path / "new.csv").resolve()
