"""Where CoInfer keeps its data: one `Storage` value, made once from `--storage`, and what derives from it.

    storage = Storage.parse(args.storage)      # None: the shipped database (apps.DEFAULT_STORAGE)
    store = Store(storage, create=False)       # the accuracy/latency database (database/store.py)
    storage.queue                              # the build studies' Optuna RDB storage (database/distributed.py)
    storage.study_storage                      # the searches' default study storage (search/study.py)
    storage.display                            # the URL with its password masked, for messages
    app_flags(app, storage)                    # `--app REF --storage URL`: how a hinted command names both

| --storage | `queue` (build studies) | `study_storage` (searches) |
|---|---|---|
| SQLite file X.sqlite (a path, sqlite:///X.sqlite) | sqlite:///X.queue.sqlite beside it | X.studies.journal beside it |
| a server URL (postgresql://...) | the same database (Optuna's own tables) | the same database |
| sqlite:///:memory: | refused: workers cannot share it | memory |

Beside the file, not in it: the shipped accuracy file stays free of Optuna's tables. No other
module parses a storage URL. `is_unreachable` tells a database that cannot be reached (a server
down: connection refused, a timeout) from bad input, so every CLI exits 3 on it (`cli.errors.Unreachable`).

Every wait has a deadline, stated here once (README, "Exit status"); its expiry is one line, exit 3:

    CONNECT_TIMEOUT_S  connecting to a database server (--storage, --queue, --study-storage): libpq connect_timeout
    KEEPALIVE_S        a server host lost mid-query (a crash, a cut link): TCP keepalives (half of it idle,
                       then 3 probes) and TCP_USER_TIMEOUT (unacknowledged data)
    LOCK_TIMEOUT_S     a lock another process holds: SQLite's busy timeout, PostgreSQL's lock_timeout (row and
                       advisory locks), the study journal's lock file (search/journal.py)

`connect_args` gives every engine of a storage these settings (`Store`, the build queue, the study
storage, `reports.build_status`). A build worker that loses a database it had reached retries it
for `QueueConfig.retry_db_s` (database/rdb.py); one it never reached is reported at once.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from apps import DATABASE_FILE, DEFAULT_STORAGE, App
from cli.errors import CoInferError, Unreachable, chain, first_line, mask_url
from cli.paths import seeded

CONNECT_TIMEOUT_S = 10  # connecting to a database server, each address tried
LOCK_TIMEOUT_S = 30  # waiting for a lock another process holds (SQLite busy, PostgreSQL lock_timeout, the journal's)
KEEPALIVE_S = 60  # a server host silent this long (30 s idle, then 3 probes 10 s apart) is a lost connection

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
        Raises a one-line CoInferError for an empty or malformed value. None in an installed copy is a copy of the
        shipped database in the user's data folder, made on first use (`cli.paths.seeded`)."""
        if text is None:
            seeded(DATABASE_FILE)
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
    def flag(self) -> str:
        """` --storage URL` (its password masked) for a command an error hints at; "" for the shipped database."""
        return "" if self.url == DEFAULT_STORAGE else f" --storage {shlex.quote(self.display)}"

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

    def connect_args(self, **options: str) -> dict:
        """The DBAPI connect arguments that put this storage's waits under their deadlines (module doc):
        SQLite's busy timeout; PostgreSQL's connect timeout, keepalives and lock timeout, with `options`
        (server settings such as synchronous_commit="off") added; nothing for other databases."""
        if self.backend == "sqlite":
            return {"timeout": LOCK_TIMEOUT_S}
        if self.backend != "postgresql":
            return {}
        import sqlalchemy as sa
        query = sa.engine.make_url(self.url).query  # the URL's own settings win (these arguments would replace them)
        settings = {"lock_timeout": f"{LOCK_TIMEOUT_S * 1000}", **options}
        given = query.get("options")
        args = {"connect_timeout": CONNECT_TIMEOUT_S, "keepalives": 1, "keepalives_idle": KEEPALIVE_S // 2,
                "keepalives_interval": KEEPALIVE_S // 6, "keepalives_count": 3, "tcp_user_timeout": KEEPALIVE_S * 1000,
                "options": " ".join([*(f"-c {k}={v}" for k, v in settings.items()), *([given] if given else [])])}
        return {k: v for k, v in args.items() if k == "options" or k not in query}

    def check_reachable(self) -> None:
        """Connect once: `Unreachable` (exit 3) when the server cannot be reached, a one-line
        CoInferError for any other failure (a missing driver, refused credentials)."""
        import sqlalchemy as sa
        try:
            engine = sa.create_engine(self.url, connect_args=self.connect_args())
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


LOCK_WORDS = ("database is locked", "due to lock timeout")  # SQLite busy, PostgreSQL lock_timeout


def _cause(exc: BaseException | None, words: tuple[str, ...], kind: type | None = None) -> BaseException | None:
    """The first (driver's) exception along `exc`'s chain that is a `kind` or whose message holds one of `words`
    (lower case), if any."""
    for e in chain(exc):
        orig = getattr(e, "orig", None) or e
        if (kind is not None and isinstance(e, kind)) or any(w in str(orig).lower() for w in words):
            return orig
    return None


def lock_expired(exc: BaseException | None) -> bool:
    """Whether `exc` (or an exception in its chain) is a wait for another process's lock that ran past
    `LOCK_TIMEOUT_S`: SQLite "database is locked", PostgreSQL "canceling statement due to lock timeout"."""
    return _cause(exc, LOCK_WORDS) is not None


def lock_error(what: str, url: str, exc: BaseException, waited_s: float = LOCK_TIMEOUT_S) -> Unreachable:
    """One line for a lock another process held past the wait's deadline (exit 3), the password masked."""
    cause = _cause(exc, LOCK_WORDS) or exc
    return Unreachable(f"{what} {mask_url(url)}: another process held a lock for over {waited_s:g} s "
                       f"({mask_url(first_line(cause))})")


def _unreachable_cause(exc: BaseException | None) -> BaseException | None:
    """The exception of `exc`'s chain that says a database server could not be reached, if one does."""
    return _cause(exc, UNREACHABLE_WORDS, Unreachable)


def is_unreachable(exc: BaseException | None) -> bool:
    """Whether `exc` (or an exception in its chain) says a database server could not be reached."""
    return _unreachable_cause(exc) is not None


def unreachable(what: str, url: str, exc: BaseException) -> Unreachable:
    """One line for a database that cannot be reached (the driver's words), the password masked."""
    cause = _unreachable_cause(exc) or exc
    text = first_line(cause)
    return Unreachable(f"{what} {mask_url(url)} unreachable: {mask_url(text)}")


def app_flags(app: App, storage: Storage | str | None = None) -> str:
    """`--app REF[ --storage URL]`: the app as the user named it (`App.ref`: a path stays a path) and the
    databases it was read from, for a command an error hints at, so the hint works as printed."""
    return f"--app {app.ref}" + as_storage(storage).flag
