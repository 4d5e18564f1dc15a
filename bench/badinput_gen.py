"""Generated bad inputs for bench.badinput (`--generated N --seed S`): property-based cases drawn by hypothesis.

Every CLI's parser is read, not listed: `commands()` runs each CLI's `main([])` with argparse's
`parse_known_args` replaced by one that raises with the parser, so the options, their types, choices,
nargs and subcommands come from the code. A case is one command (a CLI and subcommand) with 0-4 options
set to values at the edges of their type (ints 0, -1, 2**63, 2**70, 10**100, a 5,000-digit one; floats
-0.0, 1e308, 5e-324, nan and inf where the type takes them; strings empty, unicode, 100,000 long, with
a newline, path traversal, scheme strings, URLs with a password), plus exactly one *poison*: something
that makes the whole command bad input, whatever the other options say. Poisons:
- parse: a value its option's type refuses, a value outside its choices, an unknown option or an
  abbreviation of a long one (abbreviations are off), an option without its value, a required option
  missing, a stray positional (argparse refuses these before anything runs);
- a named input that is bad: the file missing, empty, a folder, a FIFO, a symlink loop, a dangling
  symlink, a sparse file over the reader's size limit; or a document built from its schema (an app
  YAML from apps/schema.py, devices.yml, an accuracy CSV / Opt-CoInfer table, a latency-profile JSON,
  the paper's JSON, a token file) and then broken: a key removed, a wrong type, an edge value, nesting
  33 to 100,000 deep, a YAML alias bomb, an unknown key, a truncated, binary, NUL, BOM or CRLF text.
  Each broken document is checked bad by the project's own reader (`load_app`, `load_devices`,
  `read_table`, `read_profile`, `read_paper_profile`, `resolve_token`) before it is used; one that
  reader still accepts is broken further;
- a bad --storage (a corrupt file, a folder, a FIFO, a file on a full or a read-only tmpfs, an unknown
  dialect, an unreachable server whose URL carries a password) or a bad output (a folder, a missing
  folder, the case's database, a symlink to it, a FIFO, a read-only tmpfs, a full tmpfs for exports).
Cases are drawn by a hypothesis `@given` run under `@seed(S)` with only the generate phase, so a seed and
a count give the same cases (hypothesis is pinned in requirements.txt); `reproduction(case)` prints the
command line and the files of one.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import runpy
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from apps import APPS_DIR, REPO_ROOT
from bench.badinput_cases import SECRET, Case, FileSpec

EXITS = (2, 3)  # bad input, or a server that cannot be reached
# CLIs that must not run past their parser when a poison is missed (servers, namespaces, load, process
# classes, benchmarks of minutes, this benchmark itself): only parse poisons for them
PARSE_ONLY = {"runtime.testbed", "runtime.linkprobe", "runtime.cloud", "runtime.training", "bench.flood",
              "bench.profiler", "bench.badinput", "bench.fuzz", "bench.codec", "bench.scale", "bench.studystorage",
              "bench.corun"}
SKIP_OPTIONS = {"tls_cert", "tls_key", "tls_ca", "help"}  # the cloud's TLS admission is another change's
# what a value-taking option names, by its dest (the CLI's own names); others are plain strings
ROLES = {"app": "app", "apps": "app", "devices": "devices", "token_file": "token", "table": "csv",
         "replay": "json", "storage": "storage", "queue": "storage", "study_storage": "storage",
         "postgres": "storage", "out": "output", "plot": "output", "progress": "output",
         "train_progress": "output", "run": "folder"}
PATH_ROLES = {("database.formats", "import-csv"): "csv", ("database.formats", "import-optcoinfer"): "txt",
              ("database.formats", "export-csv"): "export", ("database.formats", "export-optcoinfer"): "export",
              ("database.profile_io", "import-profile"): "profile",
              ("database.profile_io", "export-profile"): "export"}
# an option that is read only in some modes, so a bad file there is not bad input by itself
NOT_ALWAYS_READ: set[tuple[str, str]] = set()

HUGE_DIGITS = "9" * 5000  # over Python's 4,300-digit limit for int(str)
INT_EDGES = ["0", "-1", "1", "2", "3", "7", "31", "2147483647", "2147483648", "4294967296", "9223372036854775807",
             str(2**63), str(-(2**63) - 1), str(2**64), str(2**70), str(-(2**70)), str(10**100), "+3", " 5", "1_000",
             "007", "\u0663"]
FLOAT_EDGES = ["0", "-0.0", "1", "0.5", "2.5", "1e-9", "5e-324", "1e-320", "1e308", "-1e308",
               "1.7976931348623157e308", "-1", "1e3", "1e9", "nan", "inf", "-inf", "NaN", "+Infinity", "1_0.5", " 1.5"]
JUNK = ["", "x", "1.5", "1e", "0x10", "nan", "inf", "1,2", " ", "\u00e9", "2**70", "--", "1e999", "0b1", "١.5"]
URLS = [f"postgresql://u:{SECRET}@127.0.0.1:1/db", f"postgresql+psycopg://u:{SECRET}@127.0.0.1:1/db?password={SECRET}",
        "nosuchdialect://x/y", "sqlite:///{tmp}/corrupt.sqlite", "sqlite://", "mysql://u@127.0.0.1:1/x"]
SCHEMES = ["0,1,1", "-1,1,1", "99,1,1", "4,16,4", "4,16,0", "4,16,9", f"4,{2**70},3", "4,16", "all-cloud",
           "all-edge", "point:x", "point:99", "1e308,1,1", "nan,1,1", "4,16,4;4,16,4", "a=4,16,4"]
STRINGS = ["", " ", "x", "-", ",", ",,", "a,,b", "=", "\u00e9\u2603\U0001d11e", "a" * 100_000, "line\nbreak",
           "\t", "\x1b[2J", "$(id)", "%s%n", "vgg16_digits", "nope", "cpu", "cuda", "cuda:99", "mps", "memory",
           ":memory:", "cpu-edge", "quarter-edge", "a/b", ".hidden", "x" * 65, "tpe", "coinfer", "random",
           "127.0.0.1:1", "127.0.0.1:99999", "[::1]:1", "localhost:-1", "{tmp}", "{tmp}/missing",
           "{tmp}/corrupt.sqlite", "/nonexistent/x", *SCHEMES, *URLS]
INPUT_PATHS = ["../../../../etc/passwd", "/etc/passwd", "/dev/zero", "/dev/null", "/proc/self/status", "/", "."]


@dataclass(frozen=True)
class Option:
    """One argparse action as the generator needs it."""
    flags: tuple[str, ...]  # empty for a positional
    dest: str
    takes: int  # 0: a flag; 1: one value; 2: a fixed pair; -1: one or more
    type: Callable[[str], Any] | None
    choices: tuple[str, ...] | None
    required: bool


@dataclass(frozen=True)
class Command:
    """A CLI and, when it has them, one subcommand (the first positional), with its options."""
    cli: str
    sub: str | None
    options: tuple[Option, ...]
    positionals: tuple[Option, ...]

    @property
    def name(self) -> str:
        return f"{self.cli} {self.sub}" if self.sub else self.cli

    def flags(self) -> set[str]:
        return {f for o in self.options for f in o.flags}


class _Parser(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def repository_clis() -> list[str]:
    """Every CLI of the repository: the scripts and modules (a package's __main__ is the package) that run their
    main through run_cli."""
    out = set()
    for folder, dirs, files in os.walk(REPO_ROOT):
        dirs[:] = [d for d in dirs if not d.startswith((".", "__")) and d != "tests"]
        for name in files:
            path = Path(folder, name)
            if name.endswith(".py") and "\n    run_cli(main)" in path.read_text():  # under `if __name__ ...`
                parts = path.relative_to(REPO_ROOT).with_suffix("").parts
                out.add(name if len(parts) == 1 else ".".join(parts).removesuffix(".__main__"))
    return sorted(out)


def main_of(cli: str) -> Callable[[list[str] | None], int | None]:
    """A CLI's main function: a script's is run as a module named after it; a package's is in its __main__."""
    if cli.endswith(".py"):
        return runpy.run_path(str(REPO_ROOT / cli), run_name=f"coinfer_script_{cli[:-3]}")["main"]
    try:
        return importlib.import_module(f"{cli}.__main__").main
    except ModuleNotFoundError:
        return importlib.import_module(cli).main


def parser_of(cli: str) -> argparse.ArgumentParser:
    """The parser a CLI's main builds, caught at its first parse (nothing after it runs)."""
    def grab(self, args=None, namespace=None):
        raise _Parser(self)
    saved = argparse.ArgumentParser.parse_known_args
    argparse.ArgumentParser.parse_known_args = grab  # type: ignore[method-assign]
    try:
        main_of(cli)([])
    except _Parser as got:
        return got.parser
    finally:
        argparse.ArgumentParser.parse_known_args = saved  # type: ignore[method-assign]
    raise RuntimeError(f"{cli}: main returned without parsing its arguments")


def _option(action: argparse.Action) -> Option:
    nargs = action.nargs
    takes = 0 if nargs == 0 else 2 if nargs == 2 else -1 if nargs in ("+", "*") else 1
    choices = tuple(str(c) for c in action.choices) if action.choices is not None else None
    return Option(tuple(action.option_strings), action.dest, takes, action.type, choices, bool(action.required))


def _commands_of(cli: str, parser: argparse.ArgumentParser) -> list[Command]:
    options, positionals, subs = [], [], None
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.dest in SKIP_OPTIONS:
            continue
        if isinstance(action, argparse._SubParsersAction):
            subs = action.choices
            continue
        (options if action.option_strings else positionals).append(_option(action))
    if subs:
        out = []
        for name, sub in subs.items():
            inner = _commands_of(cli, sub)[0]
            out.append(Command(cli, name, tuple(options) + inner.options, tuple(positionals) + inner.positionals))
        return out
    first = positionals[0] if positionals else None
    if first is not None and first.choices:  # an action positional: one command per action
        return [Command(cli, c, tuple(options), tuple(positionals[1:])) for c in first.choices]
    return [Command(cli, None, tuple(options), tuple(positionals))]


_COMMANDS: list[Command] = []


def commands() -> list[Command]:
    """Every command of every CLI, read from its parser (cached)."""
    if not _COMMANDS:
        for cli in repository_clis():
            _COMMANDS.extend(_commands_of(cli, parser_of(cli)))
    return _COMMANDS


def _parses(option: Option, value: str) -> bool:
    if option.choices is not None and value not in option.choices:
        return False
    if option.type is None:
        return True
    try:
        option.type(value)
        return True
    except (ValueError, TypeError, argparse.ArgumentTypeError, OverflowError):
        return False
    except Exception:  # noqa: BLE001 - a type that fails any other way is refused by argparse as well
        return False


def role(command: Command, option: Option) -> str | None:
    if option.dest == "path" and command.sub:
        return PATH_ROLES.get((command.cli, command.sub))
    if option.dest == "json" and option.takes == 1:
        return "paper"
    return ROLES.get(option.dest)


# ---- documents built from the schemas, then broken ----

@dataclass(frozen=True)
class Raw:
    """Text put into a document as it is (a nesting or a number no serializer writes)."""
    text: str


def _serialise(doc: Any, kind: str) -> str:
    raws: list[str] = []

    def mark(x: Any) -> Any:
        if isinstance(x, Raw):
            raws.append(x.text)
            return f"RAWMARK{len(raws) - 1}X"
        if isinstance(x, dict):
            return {k: mark(v) for k, v in x.items()}
        if isinstance(x, list):
            return [mark(v) for v in x]
        return x
    marked = mark(doc)
    if kind == "json":
        text = json.dumps(marked, allow_nan=True)
    else:
        text = yaml.safe_dump(marked, sort_keys=False, allow_unicode=True, width=2**30)
    for i, raw in enumerate(raws):
        for form in (f'"RAWMARK{i}X"', f"'RAWMARK{i}X'", f"RAWMARK{i}X"):
            text = text.replace(form, raw)
    return text


def _deep(depth: int, kind: str) -> Raw:
    if kind == "json" or depth % 2:
        return Raw("[" * depth + "]" * depth)
    return Raw("{a: " * depth + "1" + "}" * depth)


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    out = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append((*prefix, k))
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:4]):
            out.append((*prefix, i))
            out += _paths(v, (*prefix, i))
    return out


def schema_paths(model: Any, prefix: tuple = ()) -> list[tuple[tuple, bool]]:
    """Every key of a pydantic model and of the models it nests: (path, required)."""
    import typing

    from pydantic import BaseModel

    def models_in(annotation: Any) -> list[type]:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return [annotation]
        return [m for arg in typing.get_args(annotation) for m in models_in(arg)]
    out = []
    for name, info in model.model_fields.items():
        out.append(((*prefix, name), info.is_required()))
        for sub in models_in(info.annotation):
            out += schema_paths(sub, (*prefix, name))
    return out


EDGE_VALUES: list[Any] = [0, -1, 2**63, 2**70, -(2**70), Raw(HUGE_DIGITS), 1e308, 5e-324, -0.0, float("nan"),
                          float("inf"), float("-inf"), "", "\u00e9\u2603", "a\x00b", "x" * 100_000, "../../etc/passwd",
                          "0,1,1", True, None, [], {}]
WRONG_TYPES: list[Any] = [[1, 2], {"k": 1}, "x", True, 3, 1.5, None]


def _get_parent(doc: Any, path: tuple) -> tuple[Any, Any] | None:
    target = doc
    for part in path[:-1]:
        try:
            target = target[part]
        except (KeyError, IndexError, TypeError):
            return None
    if isinstance(target, dict) or (isinstance(target, list) and isinstance(path[-1], int)
                                    and path[-1] < len(target)):
        return target, path[-1]
    return None


def break_doc(draw: Callable, doc: Any, paths: list[tuple], kind: str) -> tuple[Any, str]:
    """One change to a document: remove a key, a wrong type, an edge value, deep nesting, an unknown key."""
    how = draw(_st().sampled_from(["remove", "wrong type", "edge value", "deep", "unknown key"]))
    if not paths:
        return Raw("[" * 40 + "]" * 40), "not a mapping, nested 40 deep"
    path = draw(_st().sampled_from(paths))
    hit = _get_parent(doc, path)
    where = ".".join(map(str, path))
    if hit is None:
        return doc, f"{where}: absent"
    parent, key = hit
    if how == "remove" and isinstance(parent, dict):
        parent.pop(key, None)
        return doc, f"{where} removed"
    if how == "unknown key":
        target = parent.get(key) if isinstance(parent, dict) else parent[key]
        if isinstance(target, dict):
            target["no_such_key"] = 1
            return doc, f"{where}.no_such_key added"
    if how == "deep":
        depth = draw(_st().sampled_from([33, 100, 3000, 100_000]))
        parent[key] = _deep(depth, kind)
        return doc, f"{where} nested {depth} deep"
    value = draw(_st().sampled_from(WRONG_TYPES if how == "wrong type" else EDGE_VALUES))
    parent[key] = value
    shown = value.text[:20] + "..." if isinstance(value, Raw) else repr(value)[:30]
    return doc, f"{where} = {shown}"


def break_text(draw: Callable, text: str) -> tuple[str | bytes, str]:
    """A change to a document's text: truncated, binary, a NUL, a BOM, CRLF, tabs, an alias bomb, emptied."""
    how = draw(_st().sampled_from(["truncate", "binary", "nul", "bom", "crlf", "tabs", "bomb", "empty", "none"]))
    if how == "truncate" and text:
        cut = draw(_st().integers(0, len(text) - 1))
        return text[:cut], f"truncated at {cut}"
    if how == "binary":
        return b"\xff\xfe\x00\x81" + text.encode(), "binary prefix"
    if how == "nul" and text:
        at = draw(_st().integers(0, len(text) - 1))
        return text[:at] + "\x00" + text[at:], f"NUL at {at}"
    if how == "bom":
        return "\ufeff" + text, "BOM"
    if how == "crlf":
        return text.replace("\n", "\r\n"), "CRLF"
    if how == "tabs":
        return text.replace("  ", "\t"), "tabs"
    if how == "bomb":
        levels = "".join(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9 if i else ["x"] * 9) + "]\n"
                         for i in range(9))
        return levels + text.replace("\n", " *a8\n", 1) if ":" in text else levels + text, "alias bomb"
    if how == "empty":
        return "", "empty"
    return text, ""


def _st():
    from hypothesis import strategies
    return strategies


def _base_app() -> dict:
    doc = yaml.safe_load((APPS_DIR / "vgg16_digits.yml").read_text())
    doc["checkpoint"] = "missing-checkpoint.pt"  # a wrongly accepted app never trains over the shipped one
    return doc


def _base_devices() -> dict:
    return yaml.safe_load((REPO_ROOT / "devices.yml").read_text())


def _base_profile() -> dict:
    row = {"side": "edge", "point": 1, "channels": 1, "median_s": 0.1, "p90_s": None, "n": 1}
    return {"format": "coinfer-latency-profile/1", "app": "vgg16_digits", "device": "cpu-edge", "fingerprint": {},
            "rows": [row, {**row, "side": "cloud", "point": 2}]}


def _base_paper() -> dict:
    from database.paper import DEFAULT_JSON
    return json.loads(DEFAULT_JSON.read_text())


CSV_FIELDS = ["", "x", "nan", "inf", "-1", str(2**70), HUGE_DIGITS, "1e308", "5e-324", "0x10", " 1", "1.0",
              "\u00e9", "\x00", "a" * 200_000, "95", '"', "-0"]


def _table_text(draw: Callable, kind: str) -> tuple[str, str]:
    rows = [[str(p), str(c), str(b), f"{t:.4f}"] for p, c, b, t in ((1, 5, 1, 0.9), (4, 16, 4, 0.95), (0, 8, 8, 0.5))]
    what = []
    for _ in range(draw(_st().integers(1, 3))):
        how = draw(_st().sampled_from(["field", "column", "duplicate", "line"]))
        r = draw(_st().integers(0, len(rows) - 1))
        if how == "field":
            col, value = draw(_st().integers(0, 3)), draw(_st().sampled_from(CSV_FIELDS))
            rows[r][col] = value
            what.append(f"row {r} field {col} = {value[:12]!r}")
        elif how == "column":
            col = draw(_st().integers(0, 3))
            for row in rows:
                del row[col:col + 1]
            what.append(f"column {col} removed")
        elif how == "duplicate":
            rows.append(rows[r][:-1] + ["0.1234"])
            what.append(f"row {r} again, another top1")
        else:
            rows.append(["garbage line"])
            what.append("a garbage line")
    if kind == "csv":
        header = ["p", "c", "b", "top1"][:max(len(r) for r in rows)]
        text = ",".join(header) + "\n" + "".join(",".join(r) + "\n" for r in rows)
    else:
        text = "".join(f"{r[0]}+{r[1]}-{r[2]}*{r[3]}\n" if len(r) == 4 else " ".join(r) + "\n" for r in rows)
    return text, "; ".join(what)


def _oracle(kind: str, path: Path) -> str | None:
    """What the project's reader of this kind of file says of it: None when it accepts it, else why not."""
    from cli.errors import CoInferError
    try:
        if kind == "app":
            from apps import load_app
            load_app(str(path))
        elif kind == "devices":
            from devices.spec import load_devices
            load_devices(path)
        elif kind in ("csv", "txt"):
            from database.formats import read_csv, read_optcoinfer
            (read_csv if kind == "csv" else read_optcoinfer)(path)
        elif kind == "profile":
            from database.profile_io import read_profile
            read_profile(path)
        elif kind == "paper":
            from database.paper import read_paper_profile
            read_paper_profile(path)
        elif kind == "token":
            from runtime.secret import resolve_token
            resolve_token(None, str(path))
        elif kind == "json":
            from cli.files import read_json
            read_json(path, "replay")
            return "accepted"  # any JSON is refused by a replay that needs its keys: no oracle
        else:
            return "no reader"
    except CoInferError as exc:
        return str(exc).replace(str(path), path.name)[:80]
    except Exception as exc:  # noqa: BLE001 - the reader crashed: the command will too, which is a finding
        return f"reader crashed: {type(exc).__name__}"
    return None


SUFFIX = {"app": ".yml", "devices": ".yml", "csv": ".csv", "txt": ".txt", "profile": ".json", "paper": ".json",
          "token": ".token", "json": ".json"}
LIMITS = {"app": 2**20, "devices": 2**20, "csv": 64 * 2**20, "txt": 64 * 2**20, "profile": 64 * 2**20,
          "paper": 64 * 2**20, "token": 64 * 2**10, "json": 64 * 2**20}


def bad_document(draw: Callable, kind: str, name: str, scratch: Path) -> tuple[FileSpec, str]:
    """A file of `kind` built from its schema and broken until its reader refuses it (or its reader crashes)."""
    for _ in range(4):
        if kind in ("csv", "txt"):
            text, what = _table_text(draw, kind)
            data: str | bytes = text
        elif kind == "token":
            data = draw(_st().sampled_from(["", "  \n", "t" * 70_000, "\n\n", "\x00", "\ufeff"]))
            what = f"token {data[:8]!r}"
        else:
            base = {"app": _base_app, "devices": _base_devices, "profile": _base_profile, "paper": _base_paper,
                    "json": _base_profile}[kind]()
            if kind == "app":
                from apps.schema import AppSpec
                paths = [p for p, _ in schema_paths(AppSpec)]
                paths = [tuple("devices" if p == "devices" else p for p in path) for path in paths]
            elif kind == "devices":
                from apps.schema import Device
                names = list(base["devices"])
                paths = [("devices", n, *p) for n in names for p, _ in schema_paths(Device) if p != ("name",)]
                paths += [("devices",), ("devices", names[0])]
            else:
                paths = _paths(base)
            what_parts = []
            for _ in range(draw(_st().integers(1, 3))):
                base, w = break_doc(draw, base, paths, "json" if SUFFIX[kind] == ".json" else "yaml")
                what_parts.append(w)
            text = _serialise(base, "json" if SUFFIX[kind] == ".json" else "yaml")
            data, w = break_text(draw, text) if SUFFIX[kind] == ".yml" else (text, "")
            what = "; ".join(p for p in [*what_parts, w] if p)
        raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
        probe = scratch / f"probe{SUFFIX[kind]}"
        probe.write_bytes(raw)
        said = _oracle(kind, probe)
        if said is not None:
            return FileSpec(name, data=raw), f"{kind} {what} ({said})"
    return FileSpec(name, data=b"\xff\xfe\x00\x81"), f"{kind} binary garbage"


def bad_file(draw: Callable, kind: str, name: str, scratch: Path) -> tuple[list[FileSpec], str, str]:
    """A bad named input of `kind`: a broken document or a bad kind of file. The files, the path, what it is."""
    how = draw(_st().sampled_from(["document", "document", "document", "missing", "empty", "folder", "fifo",
                                   "loop", "dangling", "sparse", "symlink"]))
    path = "{tmp}/" + name
    if how == "document" or (how == "empty" and kind == "devices"):
        spec, what = bad_document(draw, kind, name, scratch)
        return [spec], path, what
    if how == "missing":
        return [], path, "missing file"
    if how == "empty":
        return [FileSpec(name)], path, "empty file"
    if how == "folder":
        return [FileSpec(name, "dir")], path, "a folder"
    if how == "fifo":
        return [FileSpec(name, "fifo")], path, "a FIFO"
    if how == "loop":
        return [FileSpec(name, "loop")], path, "a symlink loop"
    if how == "dangling":
        return [FileSpec(name, "symlink", target="{tmp}/nowhere")], path, "a dangling symlink"
    if how == "symlink":
        spec, what = bad_document(draw, kind, "target" + SUFFIX.get(kind, ""), scratch)
        return [spec, FileSpec(name, "symlink", target="{tmp}/" + spec.name)], path, f"a symlink to {what}"
    size = LIMITS.get(kind, 2**20) + 1 if draw(_st().booleans()) else 2**28
    return [FileSpec(name, "sparse", size=size)], path, f"a sparse file of {size} bytes"


def bad_storage(draw: Callable) -> tuple[list[FileSpec], str, str]:
    how = draw(_st().sampled_from(["corrupt", "folder", "fifo", "full", "readonly", "url", "sparse", "loop",
                                   "empty string"]))
    if how == "corrupt":
        return [], draw(_st().sampled_from(["{tmp}/corrupt.sqlite", "sqlite:///{tmp}/corrupt.sqlite"])), how
    if how == "folder":
        return [], "{tmp}", "a folder"
    if how == "fifo":
        return [FileSpec("fifo.sqlite", "fifo")], "{tmp}/fifo.sqlite", "a FIFO"
    if how == "loop":
        return [FileSpec("loop.sqlite", "loop")], "{tmp}/loop.sqlite", "a symlink loop"
    if how == "sparse":
        return [FileSpec("sparse.sqlite", "sparse", size=2**28)], "{tmp}/sparse.sqlite", "a sparse 256 MiB file"
    if how in ("full", "readonly"):
        return [FileSpec("mnt", how, size=65536)], "sqlite:///{tmp}/mnt/new.sqlite", f"a new file on a {how} tmpfs"
    if how == "empty string":
        return [], "", how
    return [], draw(_st().sampled_from(URLS[:3])), "a bad URL"


def bad_output(draw: Callable, export: bool, stored: bool) -> tuple[list[FileSpec], str, str]:
    """A bad output: the database (and a link to it) only for a command with --storage, whose input it is; a full
    disk only for an export, which writes without working first."""
    hows = ["folder", "missing folder", "readonly", "fifo"] + (["database", "link to database"] if stored else []) \
        + (["full"] if export else [])
    how = draw(_st().sampled_from(hows))
    if how == "folder":
        return [], "{tmp}", how
    if how == "missing folder":
        return [], "{tmp}/no/such/dir/out.x", how
    if how == "database":
        return [], "{db}", how
    if how == "link to database":
        return [FileSpec("link.out", "symlink", target="{db}")], "{tmp}/link.out", how
    if how == "fifo":
        return [FileSpec("fifo.out", "fifo")], "{tmp}/fifo.out", "an existing FIFO"
    return [FileSpec("mnt", how, size=65536)], "{tmp}/mnt/out.x", f"a {how} tmpfs"


# ---- one case ----

def _value(draw: Callable, command: Command, option: Option) -> str:
    """A value at the edge of the option's type that its parser takes (so the poison is what is refused)."""
    r = role(command, option)
    if option.choices is not None:
        pool = list(option.choices)
    elif option.type is not None and option.type.__name__ in ("int", "_port", "_nbytes"):
        pool = INT_EDGES
    elif option.type is not None and "float" in option.type.__name__:
        pool = FLOAT_EDGES
    elif r == "storage":
        return "{db}"
    elif r in ("output", "export"):
        return "{tmp}/out" + draw(_st().sampled_from([".png", ".csv", ".json", ".x"]))
    elif r is not None:
        pool = ["vgg16_digits", "nope", "{tmp}/missing" + SUFFIX.get(r, ""), *INPUT_PATHS] if r == "app" else [
            "{tmp}/missing" + SUFFIX.get(r, ""), *INPUT_PATHS]
    else:
        pool = STRINGS + [draw(_st().text(_st().characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                                          max_size=12))]
    good = [v for v in pool if _parses(option, v)]
    return draw(_st().sampled_from(good)) if good else "1"


def _args(option: Option, value: str | list[str]) -> list[str]:
    values = value if isinstance(value, list) else [value]
    if not option.flags:
        return values
    flag = option.flags[-1] if option.flags[-1].startswith("--") else option.flags[0]
    if option.takes == 1 and values[0].startswith("-"):
        return [f"{flag}={values[0]}"]
    return [flag, *values]


def _filled(draw: Callable, command: Command, option: Option) -> list[str]:
    if option.takes == 0:
        return _args(option, [])
    count = 2 if option.takes == 2 else draw(_st().integers(1, 3)) if option.takes == -1 else 1
    values = [_value(draw, command, option) for _ in range(count)]
    if option.takes != 1 and any(v.startswith("-") for v in values):
        values = ["1"] * count
    return _args(option, values if option.takes != 1 else values[0])


def _typed(command: Command) -> list[Option]:
    """The options whose type refuses some junk value (a Path takes any text: never a parse poison)."""
    return [o for o in command.options + command.positionals
            if o.type is not None and o.takes and any(not _parses(o, j) for j in JUNK)]


def _poisons(command: Command) -> list[str]:
    kinds = ["unknown option", "abbreviation", "stray positional"]
    if _typed(command):
        kinds.append("type")
    if any(o.choices for o in command.options):
        kinds.append("choice")
    if any(o.takes == 1 and o.flags for o in command.options):
        kinds.append("no value")
    if any(o.required for o in command.options) or command.positionals:
        kinds.append("required missing")
    if command.cli not in PARSE_ONLY:
        for o in command.options + command.positionals:
            r = role(command, o)
            if r and o.takes == 1 and (command.cli, o.dest) not in NOT_ALWAYS_READ:
                kinds.append(f"file:{o.dest}")
    return kinds


def draw_case(draw: Callable, command: Command, scratch: Path) -> Case:
    """One generated case of a command: edge values for some options, and one poison."""
    st = _st()
    kinds = _poisons(command)
    semantic = [k for k in kinds if k.startswith("file:")]
    kind = draw(st.sampled_from(semantic)) if semantic and draw(st.integers(0, 3)) else draw(st.sampled_from(kinds))
    by_dest = {o.dest: o for o in command.options + command.positionals}
    poisoned = by_dest.get(kind[5:]) if kind.startswith("file:") else None
    files: list[FileSpec] = []
    label = ""
    chosen: dict[str, list[str]] = {}
    # the safe defaults: the case's database and outputs in its folder unless poisoned
    for o in command.options:
        r = role(command, o)
        anchored = o.dest in ("storage", "out", "plot", "progress", "train_progress")
        if o is not poisoned and not o.required and o.takes == 1 and r and anchored:
            chosen[o.dest] = _args(o, _value(draw, command, o))
    optional = [o for o in command.options if not o.required and o is not poisoned and o.dest not in chosen]
    for o in draw(st.lists(st.sampled_from(optional), max_size=4, unique_by=lambda o: o.dest)) if optional else []:
        chosen[o.dest] = _filled(draw, command, o)
    required = [o for o in command.options if o.required and o is not poisoned]
    dropped = None
    if kind == "required missing":
        dropped = draw(st.sampled_from(required + list(command.positionals)))
        label = f"required {'/'.join(dropped.flags) or dropped.dest} missing"
    for o in required:
        if o is not dropped:
            chosen[o.dest] = _filled(draw, command, o)
    argv = [a for part in chosen.values() for a in part]
    positional_values: list[str] = []
    if command.sub:
        positional_values.append(command.sub)
    for o in command.positionals:
        if o is dropped:
            break
        if o is poisoned:
            break
        positional_values.append(_value(draw, command, o) if role(command, o) is None else
                                 "{tmp}/" + ("out.x" if role(command, o) == "export" else "missing"))
    if kind.startswith("file:") and poisoned is not None:
        r = role(command, poisoned)
        if r == "storage":
            files, value, what = bad_storage(draw)
        elif r in ("output", "export"):
            files, value, what = bad_output(draw, r == "export", "storage" in by_dest)
        elif r == "folder":
            files, value, what = [FileSpec("runfolder", "dir")], "{tmp}/runfolder", "an empty folder"
        else:
            files, value, what = bad_file(draw, r, "input" + SUFFIX.get(r, ""), scratch)
        label = f"{'/'.join(poisoned.flags) or poisoned.dest}: {what}"
        if poisoned.flags:
            if value.startswith("-") or not value:
                argv += [f"{_args(poisoned, 'x')[0]}={value}"]
            else:
                argv += _args(poisoned, value)
        else:
            positional_values.append(value)
    elif kind == "type":
        o = draw(st.sampled_from(_typed(command)))
        value = draw(st.sampled_from([j for j in JUNK if not _parses(o, j)]))
        label = f"{'/'.join(o.flags) or o.dest} = {value!r} (not its type)"
        if o.flags:
            argv += [f"{_args(o, 'x')[0]}={value}"] if o.takes == 1 else _args(o, [value] * (2 if o.takes == 2 else 1))
        else:
            positional_values = positional_values[:1 if command.sub else 0]
            for p in command.positionals:
                if p is o:
                    positional_values.append(value)
                    break
                positional_values.append("{tmp}/missing" if p.type is None else "1")
    elif kind == "choice":
        o = draw(st.sampled_from([o for o in command.options if o.choices]))
        value = draw(st.sampled_from(["magic", "", "TBF", (o.choices or ("x",))[0] + " "]))
        label = f"{o.flags[-1]} = {value!r} (not a choice)"
        argv += [f"{o.flags[-1]}={value}"]
    elif kind == "unknown option":
        name = draw(st.sampled_from(["--bogus", "--no-such-option", "-x", "--app-name", "--JSON", "---json"]))
        if name in command.flags():
            name = "--bogus"
        label = f"unknown option {name}"
        argv.insert(draw(st.integers(0, len(argv))), name)
    elif kind == "abbreviation":
        longs = [f for o in command.options for f in o.flags if f.startswith("--") and len(f) > 4]
        flags = command.flags()
        prefixes = [f[:n] for f in longs for n in range(3, len(f)) if f[:n] not in flags]
        name = draw(st.sampled_from(prefixes)) if prefixes else "--bo"
        label = f"abbreviation {name}"
        argv.insert(draw(st.integers(0, len(argv))), name)
    elif kind == "stray positional":
        label = "a stray positional"
        positional_values += [None]  # placed after the others, below
    elif kind == "no value":
        o = draw(st.sampled_from([o for o in command.options if o.takes == 1 and o.flags]))
        label = f"{o.flags[-1]} without its value"
        argv.append(o.flags[-1])
    if kind == "stray positional":
        positional_values = [v for v in positional_values if v is not None]
        if len(positional_values) < len(command.positionals) + bool(command.sub):
            positional_values += ["{tmp}/missing"] * (len(command.positionals) + bool(command.sub)
                                                       - len(positional_values))
        positional_values.append("stray")
    if kind == "no value":
        full = positional_values + argv  # the option without a value last
    else:
        full = positional_values + argv
    return Case(command.cli, tuple(full), f"[{command.name}] {label}"[:160], exit=EXITS, files=tuple(files))


def generate(n: int, seed: int) -> list[Case]:
    """`n` distinct cases drawn from `seed` (the same for the same seed, count and hypothesis version)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as seeded
    from hypothesis import strategies as st
    cmds = commands()
    out: list[Case] = []
    seen: set[tuple] = set()
    with tempfile.TemporaryDirectory(prefix="coinfer-badgen-") as folder, _quiet():
        scratch = Path(folder)
        budget = n + n // 4 + 10
        while len(out) < n and budget <= 8 * n + 80:
            found: list[Case] = []

            def keep(case: Case, found: list[Case] = found) -> None:
                found.append(case)

            @seeded(seed + budget)
            @settings(max_examples=budget, phases=[Phase.generate], database=None, deadline=None,
                      suppress_health_check=list(HealthCheck))
            @given(st.data())
            def collect(data) -> None:
                command = data.draw(st.sampled_from(cmds), label="command")
                keep(draw_case(data.draw, command, scratch))
            collect()
            for case in found:
                key = (case.cli, case.argv, case.files)
                if key not in seen:
                    seen.add(key)
                    out.append(case)
            budget *= 2
    return out[:n]


@contextlib.contextmanager
def _quiet():
    """Readers print nothing while the generator asks them; warnings they raise stay here."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
