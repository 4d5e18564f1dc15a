"""Where CoInfer keeps its data: one `Storage` value, made once from `--storage`, and what derives from it.

    storage = Storage.parse(args.storage)      # None: the shipped database (apps.DEFAULT_STORAGE)
    store = Store(storage, create=False)       # the accuracy/latency database (database/store.py)
    storage.queue                              # the build studies' Optuna RDB storage (database/distributed.py)
    storage.study_storage                      # the searches' default study storage (search/study.py)
    storage.display                            # the URL with its password masked, for messages

| --storage | `queue` (build studies) | `study_storage` (searches) |
|---|---|---|
| SQLite file X.sqlite (a path, sqlite:///X.sqlite) | sqlite:///X.queue.sqlite beside it | X.studies.journal beside it |
| a server URL (postgresql://...) | the same database (Optuna's own tables) | the same database |
| sqlite:///:memory: | refused: workers cannot share it | memory |

Beside the file, not in it: the shipped accuracy file stays free of Optuna's tables. No other
module parses a storage URL. `is_unreachable` tells a database that cannot be reached (a server
down: connection refused, a timeout) from bad input, so every CLI exits 3 on it (`cli.errors.Unreachable`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from apps import DEFAULT_STORAGE
from cli.errors import CoInferError, Unreachable, chain, first_line, mask_url

# a driver's words for a server it could not reach (psycopg: "connection refused", "timeout expired")
UNREACHABLE_WORDS = ("connection refused", "could not connect", "timeout expired", "timed out", "is the server running",
                     "no route to host", "network is unreachable", "could not translate host name",
                     "server closed the connection", "name or service not known")


@dataclass(frozen=True)
class Storage:
    """A storage location: `url` is a SQLAlchemy URL (a plain path was made an absolute sqlite:/// URL)."""

    url: str

    @classmethod
    def parse(cls, text: str | None) -> Storage:
        """The `--storage` value: None for the shipped database, a file path (SQLite) or a SQLAlchemy URL.
        Raises a one-line CoInferError for an empty or malformed value."""
        if text is None:
            text = DEFAULT_STORAGE
        if not text.strip():
            raise CoInferError("empty storage URL: give a SQLAlchemy URL or a file path, or leave --storage out")
        if "://" not in text:  # a plain path means an SQLite file
            try:
                text = f"sqlite:///{Path(text).resolve()}"
            except (OSError, RuntimeError) as exc:  # a symlink loop
                raise CoInferError(f"storage {text}: {getattr(exc, 'strerror', None) or 'symlink loop'}") from None
        import sqlalchemy as sa
        try:
            sa.engine.make_url(text)
        except sa.exc.ArgumentError as exc:
            raise CoInferError(f"bad storage URL {mask_url(text)!r}: {mask_url(str(exc))}") from None
        return cls(text)

    @property
    def display(self) -> str:
        """The URL for messages: its password masked."""
        return mask_url(self.url)

    @property
    def backend(self) -> str:
        """The dialect's name: sqlite, postgresql, ..."""
        import sqlalchemy as sa
        return sa.engine.make_url(self.url).get_backend_name()

    @property
    def memory(self) -> bool:
        """An in-memory SQLite database (nothing shared, nothing kept)."""
        return self.backend == "sqlite" and self._database in (None, "", ":memory:")

    @property
    def uri(self) -> bool:
        """An SQLite URI (`sqlite:///file:PATH?mode=ro&uri=true`): the file exists, opened as the URI says."""
        return self.backend == "sqlite" and (self._database or "").startswith("file:")

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file (of a URI too); None for a server or an in-memory database."""
        if self.backend != "sqlite" or self.memory:
            return None
        path = self._database or ""
        if path.startswith("file:"):
            path = path.removeprefix("file:").split("?", 1)[0]
        return Path(path)

    @property
    def _database(self) -> str | None:
        import sqlalchemy as sa
        return sa.engine.make_url(self.url).database

    @property
    def queue(self) -> str:
        """The build studies' Optuna RDB storage URL: `<name>.queue.sqlite` beside an SQLite file
        X.sqlite (X.queue.sqlite), the server database itself otherwise."""
        path = self.sqlite_path
        if path is not None:
            stem = path.with_suffix("") if path.suffix == ".sqlite" else path
            return f"sqlite:///{stem}.queue.sqlite"
        if self.backend == "sqlite":
            raise CoInferError("an in-memory database cannot hold a build shared by workers")
        return self.url

    @property
    def study_storage(self) -> str:
        """The searches' default study storage: a journal file beside an SQLite file
        (X.studies.journal), the server URL otherwise; in memory beside an in-memory database."""
        path = self.sqlite_path
        if path is not None:
            return str(path.with_suffix(".studies.journal"))
        return "memory" if self.memory else self.url

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file of this storage on this machine, none for a server: the SQLite file and its -wal, -shm and
        -journal, the build queue beside it (and its -wal, -shm), the searches' journal. A command's output is
        never one of them (`cli.files.check_output`'s inputs)."""
        path = self.sqlite_path
        if path is None:
            return ()
        queue = Path(self.queue.removeprefix("sqlite:///"))
        return (*(Path(f"{db}{end}") for db in (path, queue) for end in ("", "-wal", "-shm", "-journal")),
                Path(self.study_storage))

    def with_database(self, name: str) -> Storage:
        """The same server, another database on it (`bench.scale`'s fresh databases)."""
        import sqlalchemy as sa
        return Storage(sa.engine.make_url(self.url).set(database=name).render_as_string(hide_password=False))

    def check_reachable(self) -> None:
        """Connect once: `Unreachable` (exit 3) when the server cannot be reached, a one-line
        CoInferError for any other failure (a missing driver, refused credentials)."""
        import sqlalchemy as sa
        try:
            engine = sa.create_engine(self.url)
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as exc:
            raise CoInferError(f"bad storage URL {self.display!r}: {mask_url(str(exc))}") from None
        try:
            with engine.connect():
                pass
        except Exception as exc:  # SQLAlchemy / driver errors
            if is_unreachable(exc):
                raise unreachable("database", self.url, exc) from None
            raise CoInferError(f"cannot connect to {self.display}: {type(exc).__name__}") from None
        finally:
            engine.dispose()


def as_storage(storage: Storage | str | None) -> Storage:
    """A Storage as it is; a `--storage` text (or None: the shipped database) parsed."""
    return storage if isinstance(storage, Storage) else Storage.parse(storage)


def _unreachable_cause(exc: BaseException | None) -> BaseException | None:
    """The exception of `exc`'s chain that says a database server could not be reached, if one does."""
    for e in chain(exc):
        orig = getattr(e, "orig", None) or e
        if isinstance(e, Unreachable) or any(w in str(orig).lower() for w in UNREACHABLE_WORDS):
            return orig
    return None


def is_unreachable(exc: BaseException | None) -> bool:
    """Whether `exc` (or an exception in its chain) says a database server could not be reached."""
    return _unreachable_cause(exc) is not None


def unreachable(what: str, url: str, exc: BaseException) -> Unreachable:
    """One line for a database that cannot be reached (the driver's words), the password masked."""
    cause = _unreachable_cause(exc) or exc
    text = first_line(cause)
    return Unreachable(f"{what} {mask_url(url)} unreachable: {mask_url(text)}")
