"""The console scripts of an installed CoInfer (pyproject.toml's [project.scripts] names these functions).

`coinfer-show ARGS` is `python -m reports.show ARGS`: the CLI's `main` under `cli.run.run_cli` (one error line and
its exit status, never a traceback), its module imported only when the script runs, so `--help` stays as light as
the module's own. The name is the module's without its package, dashes for underscores (`coinfer-build-status`);
the benchmarks keep theirs (`coinfer-bench-search`). Helpers that only CoInfer starts (`runtime.training`,
`runtime.edgeworker`, `runtime.linkprobe`, `search.cli --worker`) and the sample trace's generator
(`bench.corun.sampletrace`) and the memory hog the testbed starts (`devices.memhog`) have none.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from cli.run import run_cli


def _script(module: str) -> Callable[[], None]:
    def run() -> None:
        run_cli(lambda argv: importlib.import_module(module).main(argv))

    run.__doc__ = f"python -m {module}"
    run.module = module  # type: ignore[attr-defined]  # read by tests/test_package.py
    return run


latency_search = _script("latency_search")
accuracy_search = _script("accuracy_search")
select_model = _script("select_model")
train = _script("models.train")
evaluate = _script("database.evaluate")
profile = _script("database.profile")
profile_io = _script("database.profile_io")
codecprof = _script("database.codecprof")
formats = _script("database.formats")
paper = _script("database.paper")
predictor = _script("database.predictor")
show = _script("reports.show")
build_status = _script("reports.build_status")
dashboard = _script("reports.dashboard")
journal = _script("search.journal")
cloud = _script("runtime.cloud")
edge = _script("runtime.edge")
export = _script("runtime.export")
testbed = _script("runtime.testbed")
bench_search = _script("bench.search")
bench_certificate = _script("bench.certificate")
bench_studystorage = _script("bench.studystorage")
bench_runtime = _script("bench.runtime")
bench_adaptivity = _script("bench.adaptivity")
bench_codec = _script("bench.codec")
bench_fuzz = _script("bench.fuzz")
bench_flood = _script("bench.flood")
bench_badinput = _script("bench.badinput")
bench_zoo = _script("bench.zoo")
bench_scale = _script("bench.scale")
bench_corun = _script("bench.corun.__main__")
bench_profiler = _script("bench.profiler")
