"""From a query request to a search ready to run: what latency_search.py / accuracy_search.py do
between parsing their flags and printing the answer.

    request = QueryRequest(LatencyQuery(0.01, 1), app="vgg16_digits", search=SearchConfig("coinfer", 0.005))
    ready = prepare(request)                     # the app, databases, latency model, evaluator, base accuracy
    result = run_search(ready.problem, ready.evaluator, ready.config)

`prepare` opens the databases, builds the latency model on the requested devices (and says where
their profiles were measured: `Prepared.profiles`, database/provenance.py), chooses the
evaluator (and protocol), finds the base accuracy and names the study; every refusal is one line
(`CoInferError`). The CLI (search/cli.py) adds what belongs to a terminal: the progress bar, the
`--workers` helper processes and the printing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING

from apps import App, load_app
from cli.errors import CoInferError
from search.evaluators import Evaluator
from search.latency import LatencyModel
from search.problem import Problem
from search.query import Query
from search.runner import SearchConfig

if TYPE_CHECKING:
    from database.provenance import ProfileUse
    from database.storage import Storage


@dataclass(frozen=True)
class QueryRequest:
    """A query, where to answer it from and how to search (built once from the command line)."""

    query: Query
    app: str  # an app name or YAML path
    search: SearchConfig  # its study_name None: named after app, evaluator, query, base, devices and sampler
    evaluator: str = "finetune"  # or table:PATH (search/evaluators.py)
    protocol: str | None = None  # the stored accuracy table to answer from (default: the app's)
    storage: Storage | None = None  # the databases (default: the shipped file)
    edge: str | None = None  # profiled devices of the latency model (default: the app's)
    cloud: str | None = None
    rtt: float | None = None  # seconds (default: the app's)
    base_accuracy: float | None = None  # default: from the database
    torch_device: str = "cpu"  # where new evaluations fine-tune (devices.torch_device; checked to exist)
    codec: str = "bitpack"  # whose bytes cross the cut in the latency model (`codec`; accuracy is the same under each)

    def to_json(self) -> dict:
        """Plain JSON (`from_json` inverts it): the `--workers` helpers read it on stdin."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return dict(out, query={"kind": self.query.name, **asdict(self.query)}, search=self.search.to_json(),
                    storage=None if self.storage is None else self.storage.url)

    @classmethod
    def from_json(cls, obj: dict) -> QueryRequest:
        from database.storage import Storage
        from search.query import QUERY_TYPES
        query = dict(obj["query"])
        return cls(**dict(obj, query=QUERY_TYPES[query.pop("kind")](**query),
                          search=SearchConfig.from_json(obj["search"]),
                          storage=None if obj["storage"] is None else Storage(obj["storage"])))


@dataclass(frozen=True)
class Prepared:
    """A search ready to run: `run_search(problem, evaluator, config)`."""

    app: App
    model: LatencyModel
    problem: Problem
    evaluator: Evaluator
    config: SearchConfig  # its study named
    profiles: tuple[ProfileUse, ...] = ()  # where the model's profiles were measured; foreign ones say so


def study_name(app: str, evaluator: str, query: object, base: float, devices: tuple[str, str], sampler: str,
               codec: str = "bitpack") -> str:
    """A query's study: app, evaluator, query, base accuracy, devices, sampler and codec (bitpack, the default,
    unnamed). The sampler is part of the name, so a query asked with another sampler starts its own study
    rather than resuming (and reusing the trials of) one that another sampler made; a study named before the
    sampler was part of the name is left as it is in its storage and not resumed."""
    return (f"{app}/{evaluator}/{query}/base{base:.6g}/{devices[0]}->{devices[1]}/{sampler}"
            + ("" if codec == "bitpack" else f"/{codec}"))


def prepare(request: QueryRequest) -> Prepared:
    from database.storage import app_flags
    from database.store import Store
    from models.build import app_points
    from search.evaluators import make_evaluator
    app = load_app(request.app)
    widths = [p.channels for p in app_points(app)]  # the model builds (and traces) before the database opens
    offline = request.search.offline
    store = Store(request.storage, create=False, readonly=offline)
    model = LatencyModel.from_store(store, app, request.edge, request.cloud, request.rtt, request.codec)
    protocols = dict(store.protocols(app.name))
    if request.protocol is not None and request.protocol not in protocols | {app.protocol.name: 0}:
        known = ", ".join(f"{p} ({n} schemes)" for p, n in protocols.items()) or "none"
        raise CoInferError(f"unknown protocol {request.protocol!r} for {app.name} (stored: {known})")
    evaluator = make_evaluator(request.evaluator, app, store, widths, device=request.torch_device,
                               protocol=request.protocol)
    flags = app_flags(app, store.storage)  # the app and databases as the user named them: a hint works as printed
    base = request.base_accuracy if request.base_accuracy is not None else evaluator.base_accuracy()
    if base is None:
        base = store.base(app.name)
    if base is None:
        raise CoInferError(f"base accuracy of {app.name} unknown: pass --base-accuracy or evaluate the base model "
                           f"(python -m database.evaluate {flags} --schemes none)")
    if offline and not evaluator.known():
        others = [f"{p} ({n} schemes)" for p, n in protocols.items() if p != getattr(evaluator, "protocol", None)]
        raise CoInferError(f"the accuracy database holds nothing for {app.name} under protocol "
                           f"{getattr(evaluator, 'protocol', request.evaluator)}: --offline cannot answer"
                           + (f"; stored: {', '.join(others)} (pass --protocol NAME)" if others else
                              f" (run the search without --offline, which evaluates what it needs, or fill the "
                              f"database: python -m database.evaluate {flags} --schemes all)"))
    if not 0 < base <= 1:  # also refuses nan
        raise CoInferError(f"base accuracy must be a fraction in (0, 1], got {base}")
    config = request.search
    if config.study_name is None:
        config = replace(config, study_name=study_name(app.name, evaluator.name, request.query, base, model.devices,
                                                       config.sampler, request.codec))
    from database.provenance import model_uses
    return Prepared(app, model, Problem(request.query, model, base), evaluator, config,
                    tuple(model_uses(store, app, model.devices)))
