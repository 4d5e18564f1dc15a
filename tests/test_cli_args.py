"""cli.args.ArgParser: one-line errors, no abbreviations, finite floats, and `--opt=--` read as the value `--`."""

from __future__ import annotations

import pytest

from cli.args import ArgParser


def parser() -> ArgParser:
    ap = ArgParser(prog="t")
    ap.add_argument("--n", type=int, default=1)
    ap.add_argument("--delay", type=float, default=1.0)
    ap.add_argument("--name", default="x")
    ap.add_argument("--mode", choices=["a", "b"], default="a")
    return ap


@pytest.mark.parametrize("argv, says", [
    (["--n=--"], "error: argument --n: invalid int value: '--' (see --help)"),
    (["--delay=--"], "error: argument --delay: invalid float value: '--' (see --help)"),
    (["--mode=--"], "error: argument --mode: invalid choice: '--' (choose from 'a', 'b') (see --help)"),
    (["--delay", "nan"], "error: argument --delay: not a finite number: 'nan' (see --help)"),
    (["--na", "y"], "error: unrecognized arguments: --na y (see --help)"),
])
def test_bad_values_are_one_line_exit_2(argv, says, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        parser().parse_args(argv)
    assert exc.value.code == 2
    assert capsys.readouterr().err == says + "\n"


def test_a_double_dash_value_is_the_text_and_the_separator_still_works() -> None:
    assert parser().parse_args(["--name=--"]).name == "--"
    ap = ArgParser(prog="t")
    ap.add_argument("--name", default="x")
    ap.add_argument("rest", nargs="*")
    args = ap.parse_args(["--name", "y", "--", "--z"])
    assert (args.name, args.rest) == ("y", ["--z"])


def test_no_password_of_a_url_is_printed_whatever_flag_it_was_given_to(capsys) -> None:
    from cli.errors import CoInferError, mask_secrets
    from cli.run import run_cli
    url = "postgresql+psycopg://u:s3cret@127.0.0.1:1/db?password=s3cret"
    assert mask_secrets(f"got {url!r}, and 'mysql://a:b@h/x'") == \
        "got 'postgresql+psycopg://u:***@127.0.0.1:1/db?password=***', and 'mysql://a:***@h/x'"
    assert mask_secrets("a:b@c and http://host/x") == "a:b@c and http://host/x"

    def main(argv):
        raise CoInferError(f"--device must be a name, got {url!r}")
    with pytest.raises(SystemExit) as exc:
        run_cli(main, [])
    assert exc.value.code == 2
    assert capsys.readouterr().err == ("error: --device must be a name, got "
                                       "'postgresql+psycopg://u:***@127.0.0.1:1/db?password=***'\n")
    with pytest.raises(SystemExit):
        parser().parse_args(["--mode", url])
    assert "s3cret" not in capsys.readouterr().err


def test_an_error_quoting_a_value_with_a_line_break_is_still_one_line(capsys) -> None:
    from cli.errors import CoInferError
    from cli.run import run_cli

    def main(argv):
        raise CoInferError("unknown device 'line\nbreak\r'")
    with pytest.raises(SystemExit):
        run_cli(main, [])
    assert capsys.readouterr().err == "error: unknown device 'line\\nbreak\\r'\n"
