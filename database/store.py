"""The databases: one SQLAlchemy schema, SQLite (WAL) by default, any SQLAlchemy URL otherwise.

Tables
- accuracy(app, protocol, p, c, b, seed, top1, top5, n_test, wall_s, host, created)
  unique on (app, protocol, p, c, b, seed); writes are idempotent (first write wins).
- base_accuracy(app, protocol, top1, top5, n_test, source, created): the unpruned model.
- layer_latency(app, device, point, channels, side, median_s, p90_s, n, created)
  side is 'edge' (input -> point, with `channels` kept at the cut) or 'cloud' (point -> logits
  from `channels` input channels). point = -1 on the cloud side is the whole model from the raw
  input (all-cloud); point = P on the edge side is the whole model on the edge (all-edge).
- point_shape(app, point, name, channels, height, width): the activation at each point.
- device(name, fingerprint JSON, notes): the machine a profile was measured on, plus the device's
  `speed` (fraction of this CPU, null: as it is) and `emulation` (dilate, quota) when it was emulated.
  Rows written before the one device vocabulary kept the speed as `cpu_quota` (with `emulation`
  dilate; without it, a cgroup quota); `Store.device` reads them as `speed` (`_device_row`), so an
  old database, a read-only one included, opens unchanged.
- layer_sample(device, source, name, kind, layer JSON, seconds, created): one layer configuration
  timed on a device (`database.layerprof`), unique on (device, source, name); the latency
  predictor's training data.
- predicted_profile(app, device, side, predictor JSON, created): marks the layer_latency rows of
  (app, device, side) as predicted by `database.predictor` rather than measured; a measured
  profile that replaces them removes the mark.
- profile_provenance(app, device, side, fingerprint JSON, source, measured_at): where (app, device, side)'s
  latency rows were measured (the fingerprint, with the device's speed and emulation) and whether they were
  `measured` here by database.profile or `imported` (database.profile_io). A profile that predates the table
  has none and reads the device row's fingerprint (source `device`); before a device row is rewritten, every
  such profile of that device is given its own row from the old one (`_freeze_provenance`), so profiling one
  app never changes what another app's profiles say. The table is created by its first write (`ON_WRITE_TABLES`),
  not by opening: an old database opened for writing but not written (the shipped one) stays byte-identical.
- accuracy_replicate(app, protocol, p, c, b, seed, top1, key, occurrence, file, line, created): every
  measurement of a scheme that was imported (database/replicates.py), unique on (app, protocol, seed, key,
  occurrence): `key` the line's text (scheme and value as written; `stored-row:<id>` for an accuracy row that
  predates its scheme's replicates), `occurrence` how many times that text had come in its file; `file` and
  `line` say where it was first read. The scheme's accuracy row holds their mean (`put_replicates`), its count
  and standard deviation come from them (`replicate_stats`). Created by its first write (`ON_WRITE_TABLES`); a
  database without it has one measurement a scheme.

- coinfer_schema(version, created): the marker CoInfer writes when it creates a database (schema version 1).
- codec_size(app, codec, point, channels, bits, mean_bytes, p95_bytes, bitpack_bytes, images, created): a
  data-dependent codec's bytes of one image's body per (p, c, b) on the app's test images (`database.codecprof`);
  created by its first write, like profile_provenance.

Opening: `Store(storage)` (a `database.storage.Storage`, or a `--storage` text it parses) creates a
missing database and its tables, with the marker. An existing database is checked first, by reading only
(`database.ownership`): one with another program's tables or views, only Optuna's tables, one of our
tables without its columns, or a newer schema version is refused in one line (exit 2) before anything
is written, so a foreign file stays byte-identical; a database from before the marker is CoInfer's when
its tables are ours (and Optuna's). `store.transaction()` makes a block of reads and writes one
transaction (the importers write a whole file so: all or nothing). `create=False` refuses a missing
SQLite file (and creates nothing);
`readonly=True` opens an existing SQLite file read-only (`mode=ro`), so a look that only reads never
writes, never leaves -wal/-shm files beside it and works on a read-only file. A writer runs in WAL
mode and, when it closes as the last connection, puts the file back in rollback mode, so readers
find no WAL to keep. Error lines never show a URL's password (`cli.errors.mask_url`); a server that
cannot be reached is `cli.errors.Unreachable` (exit 3).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import sqlite3
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import ArgumentError, DatabaseError, NoSuchModuleError, OperationalError

import database.storage
from apps import Device
from cli.errors import CoInferError, disk_full, disk_full_error, mask_url
from compress.scheme import Scheme
from database.ownership import not_ours
from database.storage import LOCK_TIMEOUT_S, Storage, as_storage, is_unreachable, lock_error, lock_expired, unreachable

meta = sa.MetaData()

accuracy = sa.Table(
    "accuracy", meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("app", sa.String(64), nullable=False),
    sa.Column("protocol", sa.String(128), nullable=False),
    sa.Column("p", sa.Integer, nullable=False),
    sa.Column("c", sa.Integer, nullable=False),
    sa.Column("b", sa.Integer, nullable=False),
    sa.Column("seed", sa.Integer, nullable=False),
    sa.Column("top1", sa.Float, nullable=False),
    sa.Column("top5", sa.Float),
    sa.Column("n_test", sa.Integer),
    sa.Column("wall_s", sa.Float),
    sa.Column("host", sa.String(128)),
    sa.Column("created", sa.DateTime),
    sa.UniqueConstraint("app", "protocol", "p", "c", "b", "seed", name="uq_accuracy_key"),
)

base_accuracy = sa.Table(
    "base_accuracy", meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("app", sa.String(64), nullable=False),
    sa.Column("protocol", sa.String(128), nullable=False),
    sa.Column("top1", sa.Float, nullable=False),
    sa.Column("top5", sa.Float),
    sa.Column("n_test", sa.Integer),
    sa.Column("source", sa.String(256)),
    sa.Column("created", sa.DateTime),
    sa.UniqueConstraint("app", "protocol", name="uq_base_key"),
)

layer_latency = sa.Table(
    "layer_latency", meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("app", sa.String(64), nullable=False),
    sa.Column("device", sa.String(64), nullable=False),
    sa.Column("point", sa.Integer, nullable=False),
    sa.Column("channels", sa.Integer, nullable=False),
    sa.Column("side", sa.String(8), nullable=False),
    sa.Column("median_s", sa.Float, nullable=False),
    sa.Column("p90_s", sa.Float),
    sa.Column("n", sa.Integer),
    sa.Column("created", sa.DateTime),
    sa.UniqueConstraint("app", "device", "point", "channels", "side", name="uq_latency_key"),
)

point_shape = sa.Table(
    "point_shape", meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("app", sa.String(64), nullable=False),
    sa.Column("point", sa.Integer, nullable=False),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("channels", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.UniqueConstraint("app", "point", name="uq_shape_key"),
)

device = sa.Table(
    "device", meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("fingerprint", sa.Text, nullable=False),
    sa.Column("notes", sa.Text),
)

layer_sample = sa.Table(
    "layer_sample", meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("device", sa.String(64), nullable=False),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("layer", sa.Text, nullable=False),
    sa.Column("seconds", sa.Float, nullable=False),
    sa.Column("created", sa.DateTime),
    sa.UniqueConstraint("device", "source", "name", name="uq_layer_sample_key"),
)

predicted_profile = sa.Table(
    "predicted_profile", meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("app", sa.String(64), nullable=False),
    sa.Column("device", sa.String(64), nullable=False),
    sa.Column("side", sa.String(8), nullable=False),
    sa.Column("predictor", sa.Text),
    sa.Column("created", sa.DateTime),
    sa.UniqueConstraint("app", "device", "side", name="uq_predicted_key"),
)

profile_provenance = sa.Table(
    "profile_provenance", meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("app", sa.String(64), nullable=False),
    sa.Column("device", sa.String(64), nullable=False),
    sa.Column("side", sa.String(8), nullable=False),
    sa.Column("fingerprint", sa.Text, nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("measured_at", sa.DateTime),
    sa.UniqueConstraint("app", "device", "side", name="uq_provenance_key"),
)

accuracy_replicate = sa.Table(
    "accuracy_replicate", meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("app", sa.String(64), nullable=False),
    sa.Column("protocol", sa.String(128), nullable=False),
    sa.Column("p", sa.Integer, nullable=False),
    sa.Column("c", sa.Integer, nullable=False),
    sa.Column("b", sa.Integer, nullable=False),
    sa.Column("seed", sa.Integer, nullable=False),
    sa.Column("top1", sa.Float, nullable=False),
    sa.Column("key", sa.String(128), nullable=False),
    sa.Column("occurrence", sa.Integer, nullable=False),
    sa.Column("file", sa.String(256)),
    sa.Column("line", sa.Integer),
    sa.Column("created", sa.DateTime),
    sa.UniqueConstraint("app", "protocol", "seed", "key", "occurrence", name="uq_replicate_key"),
)

schema_version = sa.Table(
    "coinfer_schema", meta,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("created", sa.DateTime),
)

SCHEMA_VERSION = 1  # the marker row CoInfer writes when it creates a database (database.ownership reads it)

# bytes of one image's body under a data-dependent codec per (p, c, b), profiled on the app's test images
# (`database.codecprof`, `codec.sizes.SizeRow`); read by the latency model for `--codec`
codec_size = sa.Table(
    "codec_size", meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("app", sa.String(64), nullable=False),
    sa.Column("codec", sa.String(32), nullable=False),
    sa.Column("point", sa.Integer, nullable=False),
    sa.Column("channels", sa.Integer, nullable=False),
    sa.Column("bits", sa.Integer, nullable=False),
    sa.Column("mean_bytes", sa.Float, nullable=False),
    sa.Column("p95_bytes", sa.Float, nullable=False),
    sa.Column("bitpack_bytes", sa.Integer, nullable=False),
    sa.Column("images", sa.Integer, nullable=False),
    sa.Column("created", sa.DateTime),
    sa.UniqueConstraint("app", "codec", "point", "channels", "bits", name="uq_codec_size_key"),
)

PROVENANCE_SOURCES = ("measured", "imported", "device")  # database.profile, database.profile_io, the device row
# created by the first write to them: opening an old database changes nothing
ON_WRITE_TABLES = (profile_provenance, accuracy_replicate, codec_size)
# created by a writable open (the marker only with a new database: an old one opens unchanged)
OPEN_TABLES = [t for t in meta.sorted_tables if t not in ON_WRITE_TABLES and t is not schema_version]


@dataclass(frozen=True)
class AccuracyRow:
    app: str
    protocol: str
    p: int
    c: int
    b: int
    seed: int
    top1: float
    top5: float | None = None
    n_test: int | None = None
    wall_s: float | None = None
    host: str | None = None

    @property
    def scheme(self) -> Scheme:
        return Scheme(self.p, self.c, self.b)


SCHEMA_LOCK_KEY = 0x436F496E66  # PostgreSQL advisory lock held while creating the tables ("CoInf")


@dataclass(frozen=True)
class LatencyRow:
    app: str
    device: str
    point: int
    channels: int
    side: str
    median_s: float
    p90_s: float | None = None
    n: int | None = None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA synchronous = NORMAL")
    cur.close()


def _db_error(url: str, exc: Exception, waited_s: float = LOCK_TIMEOUT_S) -> CoInferError:
    """One line for a database failure, the URL's password masked; `Unreachable` (exit 3) for a server
    that cannot be reached or a lock another process held past its deadline; a full disk, exit 2."""
    if disk_full(exc):
        return disk_full_error(exc, f"database {mask_url(url)}")
    if is_unreachable(exc):
        return unreachable("database", url, exc)
    if lock_expired(exc):
        return lock_error("database", url, exc, waited_s)
    text = str(getattr(exc, "orig", exc)).splitlines()[0] if str(getattr(exc, "orig", exc)) else type(exc).__name__
    url = mask_url(url)
    if "not a database" in text or "malformed" in text:
        return CoInferError(f"database {url} is corrupt: {text}")
    if "readonly" in text or "read-only" in text or "permission denied" in text.lower():
        return CoInferError(f"database {url} is read-only: {text}")
    return CoInferError(f"database {url}: {mask_url(text)}")


def _rollback_mode(engine: sa.Engine, path: str, wrote: list[bool]) -> None:
    """Close the engine's connections; then, when no other process has the SQLite file open, put it
    back in rollback-journal mode (WAL checkpointed, -wal/-shm removed). Never waits, never creates."""
    engine.dispose()
    if not wrote or not Path(path).is_file():  # an engine that only read never switched to WAL
        return
    try:
        conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=rw", uri=True, timeout=0)
        try:
            conn.execute("PRAGMA journal_mode = DELETE")
        finally:
            conn.close()
    except sqlite3.Error:  # another process holds the file (it does this when it closes) or it is read-only
        pass



def _device_row(info: dict) -> dict:
    """A device row's mapping with the speed under `speed`: a row written before the one device vocabulary
    kept it as `cpu_quota` (the profiler's, with `emulation` dilate, or a cgroup quota without it)."""
    info = dict(info)
    if "cpu_quota" in info and "speed" not in info:
        info["speed"] = info.pop("cpu_quota")
        if info["speed"] is not None:
            info.setdefault("emulation", "quota")
    return info

class Store:
    """The accuracy + latency databases behind one SQLAlchemy engine."""

    def __init__(self, storage: Storage | str | None = None, create: bool = True, busy_timeout_s: float | None = None,
                 readonly: bool = False) -> None:
        self.storage = as_storage(storage)  # a --storage text (None: the shipped database) parsed once
        self.url = self.storage.url
        self.readonly = readonly
        self._conn: sa.Connection | None = None  # the connection of an open `transaction()`
        self._wrote: list[bool] = []  # non-empty once this store wrote a row (and put an SQLite file in WAL mode)
        engine_url = self.url
        sqlite_file = self.storage.sqlite_path
        path = str(sqlite_file) if sqlite_file is not None and not self.storage.uri else None
        if path:
            if (not create or readonly) and not Path(path).is_file():
                raise CoInferError(f"database file not found: {path}")
            if readonly:
                engine_url = f"sqlite:///file:{Path(path).resolve()}?mode=ro&uri=true"
        try:
            connect_args = self.storage.connect_args()  # every wait under its deadline (database/storage.py)
            if busy_timeout_s is not None and "timeout" in connect_args:
                connect_args["timeout"] = busy_timeout_s
            self._busy_s = connect_args.get("timeout", database.storage.LOCK_TIMEOUT_S)  # what a lock error says
            self.engine = sa.create_engine(engine_url, connect_args=connect_args)
        except (ArgumentError, NoSuchModuleError) as exc:
            raise CoInferError(f"bad storage URL {self.storage.display!r}: {mask_url(str(exc))}") from None
        if self.engine.dialect.name == "sqlite" and not readonly:
            if path:  # a URI names an existing file
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        if path and not readonly:
            self._closer = weakref.finalize(self, _rollback_mode, self.engine, path, self._wrote)
        else:
            self._closer = weakref.finalize(self, self.engine.dispose)
        try:
            if readonly:
                with self.engine.connect() as conn:
                    self._check_ours(conn)
                return
            if self.engine.dialect.name == "postgresql":
                # several evaluators may open a new database at once: CREATE TABLE of two of them would
                # collide in PostgreSQL's catalogue, so they take turns under a transaction-scoped lock
                with self.engine.begin() as conn:
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
                    self._create_tables(conn)
            else:
                with self.engine.connect() as conn:  # reads only: a foreign file stays byte-identical
                    new = not self._check_ours(conn)
                if new:  # under SQLite's write lock, checked again: two processes may create one file at once
                    with self.engine.begin() as conn:
                        conn.exec_driver_sql("BEGIN IMMEDIATE")
                        self._create_tables(conn)
                else:
                    meta.create_all(self.engine, tables=OPEN_TABLES)  # an older database's missing tables
        except (OperationalError, DatabaseError, sqlite3.DatabaseError) as exc:
            raise _db_error(self.url, exc, self._busy_s) from None

    def _check_ours(self, conn: sa.Connection) -> bool:
        """Whether the database has tables; CoInferError (one line, nothing written) when they are not CoInfer's
        (`database.ownership`)."""
        why = not_ours(conn, dict(meta.tables), schema_version, SCHEMA_VERSION)
        if why:
            raise CoInferError(f"database {self.storage.display} is not a CoInfer database: {why}; nothing was "
                               "written (name a new file or a CoInfer database with --storage)")
        return bool(sa.inspect(conn).get_table_names())

    def _create_tables(self, conn: sa.Connection) -> None:
        """In the caller's transaction: check the database is CoInfer's, create the missing tables, and give a
        new database its schema marker."""
        new = not self._check_ours(conn)
        meta.create_all(conn, tables=OPEN_TABLES + [schema_version] if new else OPEN_TABLES)
        if new:
            conn.execute(schema_version.insert().values(version=SCHEMA_VERSION, created=_now()))

    def close(self) -> None:
        """Close the connections (a writer leaves its SQLite file in rollback mode, see the module doc)."""
        self._closer()

    def check_writable(self) -> None:
        """Raise a one-line CoInferError now when this database cannot be written (before hours of work)."""
        if self.readonly:
            raise CoInferError(f"database {mask_url(self.url)} is opened read-only")
        self._run(lambda conn: conn.execute(sa.update(device).where(sa.false()).values(name=device.c.name)))

    # -- plumbing ------------------------------------------------------------------------
    def _run(self, fn):
        """Run fn(conn) in one transaction (inside `transaction()`, in that one); database failures become
        one-line CoInferErrors."""
        if self._conn is not None:
            return fn(self._conn)
        try:
            with self.engine.begin() as conn:
                return fn(conn)
        except (OperationalError, DatabaseError) as exc:
            raise _db_error(self.url, exc, self._busy_s) from None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Every read and write of this store inside the block is one database transaction: all or nothing (an
        exception rolls back every write, tables created in it included). SQLite: taken with its write lock at
        the start (BEGIN IMMEDIATE), so what the block reads stays true until it commits. Not nested."""
        if self._conn is not None:
            raise RuntimeError("Store.transaction() does not nest")
        try:
            with self.engine.begin() as conn:
                if conn.dialect.name == "sqlite":
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                self._conn = conn
                try:
                    yield
                finally:
                    self._conn = None
        except (OperationalError, DatabaseError) as exc:
            raise _db_error(self.url, exc, self._busy_s) from None

    def _wal(self) -> None:
        """Before this store's first row write: WAL mode for an SQLite file (readers and a writer at once). Not
        inside `transaction()` (SQLite cannot change its journal mode there): it writes in the file's mode, and
        a rolled-back one leaves the file byte-identical."""
        if not self._wrote and self.engine.dialect.name == "sqlite" and self._conn is None:
            self._run(lambda conn: conn.exec_driver_sql("PRAGMA journal_mode = WAL"))
        self._wrote.append(True)

    def _insert(self, table: sa.Table):
        name = self.engine.dialect.name
        if name == "sqlite":
            return sqlite.insert(table)
        if name == "postgresql":
            return postgresql.insert(table)
        raise CoInferError(f"unsupported database dialect {name} (use sqlite or postgresql)")

    def _insert_ignore(self, table: sa.Table, rows: list[dict]) -> int:
        if not rows:
            return 0
        self._wal()
        stmt = self._insert(table).on_conflict_do_nothing().returning(table.c.id)
        return self._run(lambda conn: len(conn.execute(stmt, rows).all()))

    def _upsert(self, table: sa.Table, rows: list[dict], key: list[str]) -> None:
        if not rows:
            return
        self._wal()
        stmt = self._insert(table)
        update = {c: stmt.excluded[c] for c in rows[0] if c not in key}
        self._run(lambda conn: conn.execute(stmt.on_conflict_do_update(index_elements=key, set_=update), rows))

    # -- accuracy ------------------------------------------------------------------------
    def put_accuracy(self, rows: Iterable[AccuracyRow]) -> int:
        """Insert accuracy entries; an entry whose key exists is left as it is. Returns #new."""
        payload = [dict(r.__dict__, created=_now()) for r in rows]
        return self._insert_ignore(accuracy, payload)

    def accuracy_table(self, app: str, protocol: str | None = None,
                       seed: int | None = None) -> dict[Scheme, float]:
        """{scheme: top1}; with several seeds (or protocols if not given) the mean top1."""
        q = sa.select(accuracy.c.p, accuracy.c.c, accuracy.c.b, sa.func.avg(accuracy.c.top1)).where(
            accuracy.c.app == app)
        if protocol is not None:
            q = q.where(accuracy.c.protocol == protocol)
        if seed is not None:
            q = q.where(accuracy.c.seed == seed)
        q = q.group_by(accuracy.c.p, accuracy.c.c, accuracy.c.b)
        return self._run(lambda conn: {Scheme(p, c, b): float(t) for p, c, b, t in conn.execute(q)})

    def put_replicates(self, app: str, protocol: str, seed: int, file: str, measurements: Iterable) -> tuple[int, int]:
        """Store the measurements of the file `file` (`database.formats.Measurement`s: scheme, top1, line, text,
        occurrence) as replicates, then set each touched scheme's accuracy row to the mean of all its
        replicates: one transaction. A scheme's accuracy row stored before it had replicates (a build's, an
        older import's) becomes a replicate first (key `stored-row:<id>`), so nothing measured is dropped; a
        measurement whose (text, occurrence) is stored already is not added again. Returns (new replicates,
        new schemes)."""
        from database.replicates import STORED_ROW, replicate_key
        todo = list(measurements)
        if not todo:
            return 0, 0
        self._create(accuracy_replicate)
        self._wal()
        ac, rc = accuracy.c, accuracy_replicate.c
        touched = {m.scheme for m in todo}
        now = _now()

        def run(conn) -> tuple[int, int]:
            self._write_lock(conn)  # before the reads: concurrent imports of one table take turns
            key = (ac.app == app, ac.protocol == protocol, ac.seed == seed)
            stored = {Scheme(p, c, b): (i, t) for i, p, c, b, t in conn.execute(
                sa.select(ac.id, ac.p, ac.c, ac.b, ac.top1).where(*key))}
            have = {Scheme(p, c, b) for p, c, b in conn.execute(sa.select(rc.p, rc.c, rc.b).where(
                rc.app == app, rc.protocol == protocol, rc.seed == seed).distinct())}
            rows = [dict(app=app, protocol=protocol, p=s.p, c=s.c, b=s.b, seed=seed, top1=stored[s][1],
                         key=f"{STORED_ROW}:{stored[s][0]}", occurrence=1, file="accuracy row", line=None,
                         created=now) for s in sorted(touched & set(stored) - have)]
            if rows:
                conn.execute(self._insert(accuracy_replicate).on_conflict_do_nothing(), rows)
            new = [dict(app=app, protocol=protocol, p=m.scheme.p, c=m.scheme.c, b=m.scheme.b, seed=seed,
                        top1=float(m.top1), key=replicate_key(m.text), occurrence=m.occurrence, file=file[:256],
                        line=m.line, created=now) for m in todo]
            added = len(conn.execute(self._insert(accuracy_replicate).on_conflict_do_nothing()
                                     .returning(rc.id), new).all())
            sums: dict[Scheme, list[float]] = {}
            for p, c, b, t in conn.execute(sa.select(rc.p, rc.c, rc.b, rc.top1).where(
                    rc.app == app, rc.protocol == protocol, rc.seed == seed)):
                if Scheme(p, c, b) in touched:
                    sums.setdefault(Scheme(p, c, b), []).append(t)
            fresh = [dict(app=app, protocol=protocol, p=s.p, c=s.c, b=s.b, seed=seed, top1=math.fsum(v) / len(v),
                          host="import", created=now) for s, v in sorted(sums.items()) if s not in stored]
            if fresh:
                conn.execute(self._insert(accuracy).on_conflict_do_nothing(), fresh)
            for s, v in sums.items():
                mean = math.fsum(v) / len(v)
                if s in stored and mean != stored[s][1]:
                    conn.execute(sa.update(accuracy).where(ac.id == stored[s][0]).values(top1=mean))
            return added, len(fresh)
        return self._run(run)

    def _write_lock(self, conn) -> None:
        """Take the database's write lock now (PostgreSQL: an advisory lock for this transaction; SQLite: a no-op
        write, which takes the file's one write lock)."""
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY + 1})
        else:
            conn.execute(sa.update(device).where(sa.false()).values(name=device.c.name))

    def replicate_stats(self, app: str, protocol: str, seed: int | None = None) -> dict:
        """{scheme: `database.replicates.ReplicateStats`} over the stored replicates of `app` under `protocol`
        (and `seed`); a scheme without replicates (one measurement, a database older than replicates) is
        absent."""
        from database.replicates import ReplicateStats
        if not self._has(accuracy_replicate):
            return {}
        rc = accuracy_replicate.c
        q = sa.select(rc.p, rc.c, rc.b, rc.top1).where(rc.app == app, rc.protocol == protocol)
        if seed is not None:
            q = q.where(rc.seed == seed)
        values: dict[Scheme, list[float]] = {}
        for p, c, b, t in self._run(lambda conn: list(conn.execute(q.order_by(rc.id)))):
            values.setdefault(Scheme(p, c, b), []).append(float(t))
        return {s: ReplicateStats.of(v) for s, v in sorted(values.items())}

    def accuracy_rows(self, app: str) -> list[dict]:
        q = sa.select(accuracy).where(accuracy.c.app == app).order_by(
            accuracy.c.protocol, accuracy.c.p, accuracy.c.c, accuracy.c.b, accuracy.c.seed)
        return self._run(lambda conn: [dict(r._mapping) for r in conn.execute(q)])

    def protocols(self, app: str) -> list[tuple[str, int]]:
        """Each protocol stored for `app` with its number of distinct schemes (a scheme fine-tuned with
        several seeds counts once)."""
        schemes = sa.select(accuracy.c.protocol, accuracy.c.p, accuracy.c.c, accuracy.c.b).where(
            accuracy.c.app == app).distinct().subquery()
        q = sa.select(schemes.c.protocol, sa.func.count()).group_by(schemes.c.protocol)
        return self._run(lambda conn: [(p, int(n)) for p, n in conn.execute(q)])

    def put_base(self, app: str, protocol: str, top1: float, top5: float | None = None,
                 n_test: int | None = None, source: str = "") -> None:
        self._upsert(base_accuracy, [dict(app=app, protocol=protocol, top1=top1, top5=top5, n_test=n_test,
                                          source=source, created=_now())], ["app", "protocol"])

    def base(self, app: str, protocol: str | None = None) -> float | None:
        q = sa.select(base_accuracy.c.top1).where(base_accuracy.c.app == app)
        if protocol is not None:
            q = q.where(base_accuracy.c.protocol == protocol)
        rows = self._run(lambda conn: [r[0] for r in conn.execute(q)])
        return float(rows[0]) if rows else None

    # -- latency -------------------------------------------------------------------------
    def put_latency(self, rows: Iterable[LatencyRow]) -> None:
        payload = [dict(r.__dict__, created=_now()) for r in rows]
        self._upsert(layer_latency, payload, ["app", "device", "point", "channels", "side"])

    def delete_latency(self, app: str, device_name: str, sides: tuple[str, ...]) -> int:
        """Remove a device's rows of these sides for `app` (a replaced profile); returns how many."""
        stmt = layer_latency.delete().where(layer_latency.c.app == app, layer_latency.c.device == device_name,
                                            layer_latency.c.side.in_(sides))
        pp, pv = predicted_profile.c, profile_provenance.c
        mark = predicted_profile.delete().where(pp.app == app, pp.device == device_name, pp.side.in_(sides))
        where = profile_provenance.delete().where(pv.app == app, pv.device == device_name, pv.side.in_(sides))
        if not self._has(profile_provenance):
            where = sa.select(sa.literal(0))  # a database without provenance has none to remove
        return self._run(lambda conn: (conn.execute(mark), conn.execute(where), conn.execute(stmt).rowcount)[2])

    def latency_rows(self, app: str, device_name: str | None = None) -> list[LatencyRow]:
        q = sa.select(layer_latency).where(layer_latency.c.app == app)
        if device_name is not None:
            q = q.where(layer_latency.c.device == device_name)
        q = q.order_by(layer_latency.c.device, layer_latency.c.side, layer_latency.c.point,
                       layer_latency.c.channels)
        fields = LatencyRow.__dataclass_fields__
        return self._run(lambda conn: [LatencyRow(**{k: v for k, v in r._mapping.items() if k in fields})
                                       for r in conn.execute(q)])

    def profiled_devices(self, app: str) -> dict[str, set[str]]:
        """{device: {'edge', 'cloud'}} for the devices with latency rows for `app`."""
        q = sa.select(layer_latency.c.device, layer_latency.c.side).where(
            layer_latency.c.app == app).distinct()
        out: dict[str, set[str]] = {}
        for name, side in self._run(lambda conn: list(conn.execute(q))):
            out.setdefault(name, set()).add(side)
        return out

    def put_shapes(self, app: str, shapes: Iterable[tuple[int, str, int, int, int]]) -> None:
        rows = [dict(app=app, point=p, name=n, channels=c, height=h, width=w) for p, n, c, h, w in shapes]
        self._upsert(point_shape, rows, ["app", "point"])

    def shapes(self, app: str) -> list[tuple[int, str, int, int, int]]:
        q = sa.select(point_shape.c.point, point_shape.c.name, point_shape.c.channels,
                      point_shape.c.height, point_shape.c.width).where(
            point_shape.c.app == app).order_by(point_shape.c.point)
        return self._run(lambda conn: [tuple(r) for r in conn.execute(q)])

    # -- devices -------------------------------------------------------------------------
    def put_device(self, name: str, fingerprint: dict, notes: str = "", emulated: Device | None = None) -> None:
        """Store a device's row: the machine's `fingerprint`, and with `emulated` its speed and emulation."""
        info = _device_row(fingerprint)
        if emulated is not None:
            info.update(speed=emulated.speed, emulation=emulated.emulation)
        self._freeze_provenance(name)
        self._upsert(device, [dict(name=name, fingerprint=json.dumps(info, sort_keys=True),
                                   notes=notes)], ["name"])

    def device(self, name: str) -> dict | None:
        """A device's row as a mapping: its fingerprint, `speed` and `emulation` (when emulated) and notes."""
        q = sa.select(device.c.fingerprint, device.c.notes).where(device.c.name == name)
        rows = self._run(lambda conn: list(conn.execute(q)))
        if not rows:
            return None
        return dict(_device_row(json.loads(rows[0][0])), notes=rows[0][1] or "")

    def devices(self) -> list[str]:
        return self._run(lambda conn: [r[0] for r in conn.execute(sa.select(device.c.name).order_by(device.c.name))])

    def device_sides(self, name: str) -> set[str]:
        """The sides (edge, cloud) the device's latency rows cover, over every app."""
        q = sa.select(layer_latency.c.side).where(layer_latency.c.device == name).distinct()
        return self._run(lambda conn: {r[0] for r in conn.execute(q)})

    # -- layer samples and predicted profiles (database.layerprof, database.predictor) ----------
    def put_layer_samples(self, samples: Iterable) -> None:
        """Store `database.layerprof.LayerSample`s (a sample of the same device, source and name is replaced)."""
        rows = [dict(device=s.device, source=s.source, name=s.layer.name, kind=s.layer.kind,
                     layer=json.dumps(s.layer.to_json()), seconds=s.seconds, created=_now()) for s in samples]
        self._upsert(layer_sample, rows, ["device", "source", "name"])

    def _create(self, table: sa.Table) -> None:
        """Create one of `ON_WRITE_TABLES` before its first row (PostgreSQL: under the schema lock)."""
        if self._has(table):
            return
        self._wal()

        def create(conn) -> None:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            table.create(conn, checkfirst=True)
        self._run(create)

    def _has(self, table: sa.Table) -> bool:
        """Whether the database has `table` (one opened read-only may predate it)."""
        return self._run(lambda conn: sa.inspect(conn).has_table(table.name))

    def layer_samples(self, device_name: str) -> list:
        """A device's LayerSamples in the order they were stored (a model's layers in execution order)."""
        from database.layerprof import Layer, LayerSample
        if not self._has(layer_sample):
            return []
        q = sa.select(layer_sample.c.source, layer_sample.c.layer, layer_sample.c.seconds).where(
            layer_sample.c.device == device_name).order_by(layer_sample.c.id)
        return self._run(lambda conn: [LayerSample(device_name, src, Layer.from_json(json.loads(text)), float(t))
                                       for src, text, t in conn.execute(q)])

    def delete_layer_samples(self, device_name: str) -> int:
        stmt = layer_sample.delete().where(layer_sample.c.device == device_name)
        return self._run(lambda conn: conn.execute(stmt).rowcount)

    def put_predicted(self, app: str, device_name: str, sides: tuple[str, ...], predictor: dict) -> None:
        """Mark (app, device, side)'s latency rows as predicted, with what predicted them."""
        self._upsert(predicted_profile, [dict(app=app, device=device_name, side=side, predictor=json.dumps(predictor),
                                              created=_now()) for side in sides], ["app", "device", "side"])

    def predicted(self, app: str) -> dict[str, set[str]]:
        """{device: {'edge', 'cloud'}}: the sides of `app`'s profiles that are predicted, not measured."""
        if not self._has(predicted_profile):
            return {}
        q = sa.select(predicted_profile.c.device, predicted_profile.c.side).where(predicted_profile.c.app == app)
        out: dict[str, set[str]] = {}
        for name, side in self._run(lambda conn: list(conn.execute(q))):
            out.setdefault(name, set()).add(side)
        return out

    # -- provenance: where each profile was measured --------------------------------------
    def put_provenance(self, app: str, device_name: str, sides: Iterable[str], fingerprint: dict, source: str,
                       measured_at: dt.datetime | None = None) -> None:
        """Record where (app, device, side)'s rows were measured: `fingerprint` (with speed and emulation), `source`
        (measured or imported) and when (default: now)."""
        if source not in PROVENANCE_SOURCES:
            raise ValueError(f"provenance source must be one of {PROVENANCE_SOURCES}, got {source!r}")
        text = json.dumps(_device_row(fingerprint), sort_keys=True)
        when = measured_at or _now()
        self._create(profile_provenance)
        self._upsert(profile_provenance, [dict(app=app, device=device_name, side=side, fingerprint=text, source=source,
                                               measured_at=when) for side in sides], ["app", "device", "side"])

    def provenance(self, app: str, device_name: str) -> dict[str, dict]:
        """{side: {fingerprint, source, measured_at (ISO text or None)}} for each side of the device's profile of
        `app`; a side without its own row (written before provenance was kept) reads the device row's fingerprint
        (source `device`, measured when its newest latency row was written)."""
        ll = layer_latency.c
        q = sa.select(ll.side, sa.func.max(ll.created)).where(ll.app == app, ll.device == device_name).group_by(ll.side)
        newest = dict(self._run(lambda conn: [tuple(r) for r in conn.execute(q)]))
        out: dict[str, dict] = {}
        if self._has(profile_provenance):
            pv = profile_provenance.c
            q = sa.select(pv.side, pv.fingerprint, pv.source, pv.measured_at).where(pv.app == app,
                                                                                   pv.device == device_name)
            for side, text, source, when in self._run(lambda conn: list(conn.execute(q))):
                out[side] = {"fingerprint": json.loads(text), "source": source, "measured_at": _iso(when)}
        missing = sorted(set(newest) - set(out))
        if missing:
            row = self.device(device_name) or {}
            row.pop("notes", None)
            row = json.loads(json.dumps(row, sort_keys=True))  # as a stored provenance row reads
            for side in missing:
                out[side] = {"fingerprint": row, "source": "device", "measured_at": _iso(newest[side])}
        return dict(sorted(out.items()))

    def _freeze_provenance(self, device_name: str) -> None:
        """Give every profile of `device_name` that reads the device row its own provenance row (before the
        device row changes)."""
        ll, pv = layer_latency.c, profile_provenance.c
        q = sa.select(ll.app, ll.side, sa.func.max(ll.created)).where(ll.device == device_name).group_by(
            ll.app, ll.side)
        have = sa.select(pv.app, pv.side).where(pv.device == device_name)
        stored = set(self._run(lambda conn: [tuple(r) for r in conn.execute(have)])) if self._has(
            profile_provenance) else set()
        missing = [(a, side, when) for a, side, when in self._run(lambda conn: [tuple(r) for r in conn.execute(q)])
                   if (a, side) not in stored]
        if not missing:
            return
        row = self.device(device_name)
        if row is None:
            return
        row.pop("notes", None)
        text = json.dumps(row, sort_keys=True)
        self._create(profile_provenance)
        self._upsert(profile_provenance, [dict(app=a, device=device_name, side=side, fingerprint=text, source="device",
                                               measured_at=when) for a, side, when in missing],
                     ["app", "device", "side"])


    # -- codec sizes: a data-dependent codec's bytes per (p, c, b) ----------------------------
    def put_codec_sizes(self, app: str, codec: str, rows: Iterable) -> None:
        """Store (replace) `codec`'s measured sizes of `app` (`codec.sizes.SizeRow`s)."""
        rows = [dict(app=app, codec=codec, point=r.point, channels=r.channels, bits=r.bits, mean_bytes=r.mean,
                     p95_bytes=r.p95, bitpack_bytes=r.bitpacked, images=r.images, created=_now()) for r in rows]
        self._create(codec_size)
        self._upsert(codec_size, rows, ["app", "codec", "point", "channels", "bits"])

    def codec_sizes(self, app: str, codec: str) -> list:
        """`codec`'s measured sizes of `app` as `codec.sizes.SizeRow`s ([] when none: never profiled, or a
        database from before the table)."""
        from codec.sizes import SizeRow
        if not self._has(codec_size):
            return []
        cs = codec_size.c
        q = sa.select(cs.point, cs.channels, cs.bits, cs.mean_bytes, cs.p95_bytes, cs.bitpack_bytes, cs.images).where(
            cs.app == app, cs.codec == codec).order_by(cs.point, cs.bits, cs.channels)
        return self._run(lambda conn: [SizeRow(*r) for r in conn.execute(q)])

def _iso(when) -> str | None:
    """A stored time as ISO text (SQLite may hand back text)."""
    if when is None:
        return None
    return when.isoformat(timespec="seconds") if isinstance(when, dt.datetime) else str(when)
