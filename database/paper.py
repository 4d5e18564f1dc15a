"""Import the Opt-CoInfer paper's published latency profile as two devices of `vgg16_cars`.

    python -m database.paper            # reads database/reference/optcoinfer_paper_latency.json

The JSON holds cumulative per-module latencies (45 modules of VGG-16-BN) on a Raspberry Pi
(edge) and a GPU server (cloud), and the 1-based module index of each of the 13 partition
points. As in the paper's latency_search.py:
- edge (p, C_p)  = edge_cumulative[idx_p - 1]
- cloud (p, C_p) = cloud_cumulative[idx_last - 1] - cloud_cumulative[idx_p - 1]
  (the paper's cloud tail ends at the last conv point; the classifier is not counted)
- all-edge       = edge_all_s; all-cloud compute = 0 (the paper counts only the transfer).
Only full-width rows exist: the paper ignores pruning's compute effect. The devices are
marked `formula: optcoinfer-paper`, which tells the latency model to drop the per-channel
header as the paper does, so the paper's worked figures are reproduced exactly.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from apps import REPO_ROOT, load_app
from apps.schema import check_name
from cli.args import ArgParser
from cli.errors import CoInferError
from cli.files import read_json
from cli.run import run_cli

if TYPE_CHECKING:
    from database.store import LatencyRow, Store

DEFAULT_JSON = REPO_ROOT / "database" / "reference" / "optcoinfer_paper_latency.json"  # source: its README.md
PAPER_FORMULA = "optcoinfer-paper"


def read_paper_profile(path: Path) -> dict:
    data = read_json(path, "paper profile")
    if not isinstance(data, dict):
        raise CoInferError(f"paper profile {path} is not a JSON object")
    for key in ("edge_cumulative_s", "cloud_cumulative_s", "conv_point_index_1based", "edge_all_s"):
        if key not in data:
            raise CoInferError(f"paper profile {path} lacks '{key}'")
    def seconds(xs: object) -> bool:
        return isinstance(xs, list) and all(_number(x) and 0 <= x < 1e6 for x in xs)
    if not (seconds(data["edge_cumulative_s"]) and seconds(data["cloud_cumulative_s"]) and seconds([data["edge_all_s"]])
            and isinstance(data["conv_point_index_1based"], list)
            and all(isinstance(i, int) and not isinstance(i, bool) for i in data["conv_point_index_1based"])):
        raise CoInferError(f"paper profile {path}: latencies must be finite seconds >= 0 and point indices integers")
    n = len(data["edge_cumulative_s"])
    idx = data["conv_point_index_1based"]
    if len(data["cloud_cumulative_s"]) != n or len(idx) != 13 or not all(1 <= i <= n for i in idx):
        raise CoInferError(f"paper profile {path}: inconsistent lengths or point indices")
    return data


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def paper_rows(data: dict, app: str, edge: str, cloud: str, channels: list[int]) -> list[LatencyRow]:
    from database.store import LatencyRow
    e, g, idx = data["edge_cumulative_s"], data["cloud_cumulative_s"], data["conv_point_index_1based"]
    last = g[idx[-1] - 1]
    rows = []
    for p, i in enumerate(idx):
        rows.append(LatencyRow(app, edge, p, channels[p], "edge", e[i - 1], None, 0))
        rows.append(LatencyRow(app, cloud, p, channels[p], "cloud", last - g[i - 1], None, 0))
    rows.append(LatencyRow(app, edge, len(idx), 0, "edge", float(data["edge_all_s"]), None, 0))
    rows.append(LatencyRow(app, cloud, -1, 0, "cloud", 0.0, None, 0))
    return rows


def import_paper_profile(store: Store, path: Path = DEFAULT_JSON, app_name: str = "vgg16_cars",
                         edge: str = "pi-paper", cloud: str = "gpu-paper") -> int:
    from models.build import app_points
    data = read_paper_profile(path)
    app = load_app(app_name)
    points = app_points(app)
    rows = paper_rows(data, app.name, edge, cloud, [p.channels for p in points])
    source = data.get("source", str(path))
    for name, role in ((edge, data.get("edge_device", "edge")), (cloud, data.get("cloud_device", "cloud"))):
        store.put_device(name, {"formula": PAPER_FORMULA, "source": source, "hardware": role},
                         f"imported from {Path(path).name}; per-layer latency published by the paper")
    store.put_shapes(app.name, [(p.index, p.name, p.channels, p.height, p.width) for p in points])
    store.put_latency(rows)
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    ap = ArgParser(description="Import the Opt-CoInfer paper's latency profile.")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    ap.add_argument("--app", default="vgg16_cars")
    ap.add_argument("--edge", default="pi-paper")
    ap.add_argument("--cloud", default="gpu-paper")
    ap.add_argument("--storage", default=None)
    args = ap.parse_args(argv)
    check_name(args.edge, "--edge")
    check_name(args.cloud, "--cloud")
    read_paper_profile(args.json)  # a bad file or app fails before the database is opened
    load_app(args.app)
    from database.storage import Storage
    from database.store import Store
    n = import_paper_profile(Store(Storage.parse(args.storage)), args.json, args.app, args.edge, args.cloud)
    print(f"imported {n} latency rows for {args.app}: devices {args.edge} (edge), {args.cloud} (cloud)")
    return 0


if __name__ == "__main__":
    run_cli(main)
