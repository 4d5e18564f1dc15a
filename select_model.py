"""Model selection, KETI's VnV: the greedy model vs the fastest scheme within an accuracy budget, both run.

    python select_model.py --apps resnet18_digits,resnet34_digits,resnet50_digits --bandwidth 1 --accuracy-budget 0.10
    python select_model.py --apps resnet18_digits,resnet34_digits,resnet50_digits --bandwidth 1 --testbed

Selection: search/select.py. Measurement: runtime/vnv.py (in this process, the link computed), or with
--testbed runtime/vnv_testbed.py (the real split runtime on the testbed, the link shaped by tc tbf).
Each app's edge and cloud profiles say where they were measured (`profiles` in --json); one emulated on this CPU
but measured on another machine is a warning line on stderr (database/provenance.py).
Exit status: 0 when both VnV criteria pass (or with --select-only), 1 when one fails, 2 on bad input
(one line on stderr).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cli.args import ArgParser
from cli.errors import CoInferError
from cli.run import run_cli

if TYPE_CHECKING:  # torch, the database and the search load after parsing (--help stays fast)
    from apps import App, Device
    from runtime.vnv import VnVReport
    from search.select import Selection


def _parser() -> ArgParser:
    ap = ArgParser(prog="python select_model.py",
                   description="Greedy vs budgeted model selection (KETI VnV), both run over n test images.")
    ap.add_argument("--apps", default=None, metavar="A,B,...",
                    help="the models to choose from (default: every app on the digits dataset)")
    ap.add_argument("--edge", default=None, help="edge device (default: the apps' edge device)")
    ap.add_argument("--cloud", default=None, help="cloud device (default: the apps' cloud device)")
    ap.add_argument("--bandwidth", "-bandwidth", type=float, required=True,
                    help="edge -> cloud link, Mbps (2^20 bit/s)")
    ap.add_argument("--accuracy-budget", type=float, default=0.10,
                    help="accuracy the budgeted choice may lose against the greedy model's, in (0, 1) (default 0.10)")
    ap.add_argument("--images", "-n", type=int, default=100, help="test images both choices run over (default 100)")
    ap.add_argument("--select-only", action="store_true", help="choose, do not run")
    ap.add_argument("--testbed", action="store_true",
                    help="run both choices over the real split runtime on the testbed (network namespaces, the "
                         "link shaped by tc tbf at --bandwidth; runtime.vnv_testbed) instead of in this process")
    ap.add_argument("--devices", default=None, metavar="FILE", help="devices file (default: devices.yml)")
    ap.add_argument("--storage", default=None, help="SQLAlchemy URL (default: database/coinfer.sqlite)")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def _one(values: set[str], what: str, flag: str) -> str:
    if len(values) != 1:
        raise CoInferError(f"the apps have different {what}s ({', '.join(sorted(values))}): give {flag}")
    return next(iter(values))


@dataclass(frozen=True)
class SelectConfig:
    """A selection and its VnV run: the candidate apps (`refs`: as named on the command line, for the
    testbed's workers), the edge and cloud devices (`spec`: the edge's Device), the link, the test
    images, the accuracy budget, the database, and whether to measure (`select_only`) and where (`testbed`)."""

    apps: tuple[App, ...]
    refs: tuple[str, ...]
    edge: str
    cloud: str
    spec: Device
    bandwidth: float
    images: int = 100
    accuracy_budget: float = 0.10
    storage: str | None = None
    select_only: bool = False
    testbed: bool = False
    progress: bool = False


@dataclass(frozen=True)
class SelectOutcome:
    """The selection, the profiles among the pair's that are predicted (`app@device`), the VnV report
    (None with `select_only`) and where the profiles used were measured."""

    config: SelectConfig
    selection: Selection
    predicted: list[str]
    report: VnVReport | None
    profiles: dict[str, tuple]  # per app, where each profile it used was measured (database.provenance.ProfileUse)

    @property
    def passed(self) -> bool:
        return self.report is None or self.report.to_json()["pass"]

    def to_json(self) -> dict:
        c = self.config
        out = {"edge": c.edge, "cloud": c.cloud, "bandwidth_mbps": c.bandwidth, "selection": self.selection.to_json(),
               "predicted_profiles": self.predicted,
               "profiles": {name: [u.to_json() for u in uses] for name, uses in self.profiles.items()}}
        if self.report is not None:
            out["vnv"] = self.report.to_json()
        return out


def parse_args(argv: list[str] | None) -> tuple[SelectConfig, bool]:
    """The command line as (config, --json): the apps loaded, the devices resolved, every bad value one line."""
    args = _parser().parse_args(argv)
    from search.select import check_budget
    check_budget(args.accuracy_budget)
    if not 0 < args.bandwidth <= 1e6:
        raise CoInferError(f"--bandwidth must be in (0, 1e6] Mbps, got {args.bandwidth:g}")
    if not 1 <= args.images <= 1_000_000:
        raise CoInferError("--images must be in 1..1000000")
    if args.testbed and args.select_only:
        raise CoInferError("--testbed measures the choices, --select-only does not: give one of them")
    from apps import available_apps, load_app
    names = [a.strip() for a in args.apps.split(",")] if args.apps is not None else [
        a for a in available_apps() if load_app(a).dataset.get("name") == "digits"]
    if not names or not all(names):
        raise CoInferError(f"--apps takes A,B,..., got {args.apps!r}")
    apps = [load_app(name) for name in names]
    edge = args.edge or _one({a.edge_device for a in apps}, "edge device", "--edge")
    cloud = args.cloud or _one({a.cloud_device for a in apps}, "cloud device", "--cloud")
    from database.predictor import resolve_device
    spec = resolve_device(edge, args.devices, tuple(apps), args.storage)
    resolve_device(cloud, args.devices, tuple(apps), args.storage)
    progress = not (args.no_progress or args.json) and sys.stderr.isatty()
    return SelectConfig(tuple(apps), tuple(names), edge, cloud, spec, args.bandwidth, args.images,
                        args.accuracy_budget, args.storage, args.select_only, args.testbed, progress), args.json


def run_selection(config: SelectConfig) -> SelectOutcome:
    """Choose greedy and budgeted from the stored candidates, then (unless `select_only`) measure both."""
    from database.storage import Storage
    from database.store import Store
    from search.select import candidates, select
    apps, edge, cloud = list(config.apps), config.edge, config.cloud
    store = Store(Storage.parse(config.storage), readonly=True)
    cands = candidates(store, apps, edge, cloud, config.bandwidth)
    from database.provenance import model_uses
    uses = {a.name: tuple(model_uses(store, a, (edge, cloud))) for a in apps}
    selection = select(cands, config.accuracy_budget)
    predicted = sorted({f"{a.name}@{d}" for a in apps for d, sides in store.predicted(a.name).items()
                        if d in (edge, cloud)})
    report = None
    if not config.select_only:
        from runtime.vnv import RunConfig, measure
        by_name = {a.name: a for a in apps}
        run = RunConfig(config.spec, config.bandwidth, config.images, progress=config.progress)
        choices = ((by_name[selection.greedy.app], selection.greedy.scheme),
                   (by_name[selection.budgeted.app], selection.budgeted.scheme))
        if config.testbed:
            from runtime.vnv_testbed import measure_testbed
            report = measure_testbed(*choices, run, refs={a.name: ref for a, ref in zip(apps, config.refs)})
        else:
            report = measure(*choices, run)
    return SelectOutcome(config, selection, predicted, report, uses)


def main(argv: list[str] | None = None) -> int:
    config, as_json = parse_args(argv)
    outcome = run_selection(config)
    from database.provenance import warn_foreign  # never a foreign profile silently; said with the result, so
    warn_foreign(u for uses in outcome.profiles.values() for u in uses)  # that a failure before it stays one line
    if as_json:
        print(json.dumps(outcome.to_json()))
    else:
        _print(outcome.selection, outcome.report, config.edge, config.cloud, config.spec.speed, config.bandwidth,
               outcome.predicted)
    return 0 if outcome.passed else 1


def _print(selection, report, edge: str, cloud: str, speed: float | None, mbps: float, predicted: list[str]) -> None:
    def line(label: str, c) -> str:
        return (f"{label}: {c.app} {c.scheme}  top-1 {c.accuracy:.2%}  latency model {c.latency_s * 1e3:.2f} ms")
    print(f"{selection.considered} candidates on {edge} / {cloud} at {mbps:g} Mbps"
          + (f" (predicted profiles: {', '.join(predicted)})" if predicted else ""))
    print(line("greedy   (baseline t_b)", selection.greedy))
    print(line("budgeted (advanced t_a)", selection.budgeted)
          + f"  (top-1 >= {selection.threshold:.2%}: greedy's - {selection.accuracy_budget:g})")
    if report is None:
        return
    n = len(report.baseline.seconds)
    how = (f"in-process: edge emulated at {speed or 1:g} of this CPU by dilation; link: the bytes sent / {mbps:g} "
           "Mbps; cloud: this CPU" if report.how == "in-process" else
           f"{report.how}; each request timed by the edge client: edge + transfer + cloud")
    print(f"measured over {n} test images, alternating ({how}):")
    for note in report.notes:
        print(f"  note: {note}")
    for label, m in (("t_b", report.baseline), ("t_a", report.advanced)):
        print(f"  {label}  median {m.median_s * 1e3:8.2f} ms  (edge {m.edge_s * 1e3:.2f} + link {m.link_s * 1e3:.2f} "
              f"+ cloud {m.cloud_s * 1e3:.2f}, {m.wire_bytes} B)  top-1 {m.accuracy:.2%}")
    from runtime.vnv import ACCURACY_TARGET, SAVING_TARGET
    print(f"  latency saving  Δt = (1/n) Σ (t_b - t_a)/t_b = {report.saving:.1%}  (>= {SAVING_TARGET:.0%}): "
          f"{'PASS' if report.saving_pass else 'FAIL'}")
    print(f"  accuracy difference = {report.accuracy_diff:+.2%}  (<= {ACCURACY_TARGET:.0%}): "
          f"{'PASS' if report.accuracy_pass else 'FAIL'}")
    print(f"VnV: {'PASS' if report.saving_pass and report.accuracy_pass else 'FAIL'}")


if __name__ == "__main__":
    run_cli(main)
