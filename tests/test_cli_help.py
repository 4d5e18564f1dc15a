"""Every CLI's --help answers without importing torch (or the other heavy libraries): each runs in
its own interpreter, all at once, through a wrapper that reports what `--help` left in sys.modules."""

from __future__ import annotations

import json
import subprocess
import sys

from apps import REPO_ROOT

CLIS = ["latency_search.py", "accuracy_search.py", "database.evaluate", "database.profile", "database.profile_io",
        "database.codecprof", "database.formats", "reports.show", "database.paper", "database.predictor",
        "models.train", "runtime.edge",
        "runtime.cloud", "runtime.testbed", "bench.search", "bench.runtime", "bench.adaptivity", "bench.codec",
        "bench.fuzz", "bench.studystorage", "bench.flood", "bench.badinput", "select_model.py", "bench.zoo",
        "bench.corun", "bench.profiler", "runtime.training", "reports.build_status", "bench.scale",
        "bench.certificate", "bench.corun.sampletrace", "reports.dashboard", "search.journal"]
HEAVY = ("torch", "optuna", "sklearn", "sqlalchemy", "matplotlib")

WRAPPER = """
import json, runpy, sys
target, heavy = sys.argv[1], sys.argv[2].split(",")
sys.argv = [target, "--help"]
code = None
try:
    if target.endswith(".py"):
        runpy.run_path(target, run_name="__main__")
    else:
        runpy.run_module(target, run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "heavy": [m for m in heavy if m in sys.modules]}))
"""


def test_every_help_answers_without_heavy_imports():
    procs = {cli: subprocess.Popen([sys.executable, "-c", WRAPPER, cli, ",".join(HEAVY)], cwd=REPO_ROOT,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for cli in CLIS}
    report = {}
    for cli, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{cli}: {err}"
        last = json.loads(out.strip().splitlines()[-1])
        assert "usage" in out and last["code"] in (0, None), f"{cli}: {out[-300:]} {err}"
        report[cli] = last["heavy"]
    assert report == {cli: [] for cli in CLIS}
