"""Export a split scheme as files a device runs: `python -m runtime.export --app A --scheme S --out DIR`.

    python -m runtime.export --app vgg16_digits --scheme 1,5,1 --out split-1-5-1 [--samples 16]
    python -m runtime.edge  --artifact split-1-5-1 --server HOST:PORT       # torch and numpy only
    python -m runtime.cloud --artifact split-1-5-1 --port 5000

The head (input -> the activation at the cut, the channels kept) and the tail (the dequantised activation
-> logits) of the scheme's fine-tuned model (the weights the build kept: `runtime.weights`; a scheme without
them is refused unless `--finetune-missing`) are traced to TorchScript and checked against the in-process
model on the app's test images (largest absolute difference at most 1e-5, else nothing is written). The
manifest (`runtime/artifact.py` says every field) records the app, the scheme, the codec, the input's shape
and transform, each program's sha256 and the weights' own, the latency profile the scheme was chosen under
(`--latency-profile EDGE,CLOUD`, where it was measured) and the machine and torch that exported it. The
folder is written whole or not at all (a temporary folder beside it, renamed into place); an existing
`--out` is refused.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import tempfile
import warnings
from pathlib import Path

from apps import DEFAULT_APP, App, load_app
from cli.args import ArgParser
from cli.errors import CoInferError
from cli.run import run_cli
from compress.scheme import Scheme

TOLERANCE = 1e-5  # the exported programs against the in-process model: largest absolute difference


def _parser() -> ArgParser:
    ap = ArgParser(description="Export a split scheme's head and tail as TorchScript programs with a manifest: "
                               "what runtime.edge --artifact and runtime.cloud --artifact run.")
    ap.add_argument("--app", default=DEFAULT_APP, help="app name or YAML path")
    ap.add_argument("--scheme", required=True, help="p,c,b, all-edge or all-cloud")
    ap.add_argument("--out", required=True, metavar="DIR", help="the artifact folder to create (must not exist)")
    ap.add_argument("--samples", type=int, default=16,
                    help="test images (transformed) and labels to ship with it, 0..1024 (default 16)")
    ap.add_argument("--finetune-missing", action="store_true",
                    help="fine-tune the scheme here when the build kept no weights for it (default: refuse)")
    ap.add_argument("--latency-profile", default=None, metavar="EDGE,CLOUD",
                    help="record the profiles the scheme was chosen under (default: the app's devices)")
    ap.add_argument("--storage", default=None, help="database of those profiles (default: database/coinfer.sqlite)")
    ap.add_argument("--json", action="store_true", help="print the manifest as one JSON line")
    return ap


def export(app: App, scheme: Scheme, out: Path, *, samples: int = 16, finetune_missing: bool = False,
           profile: list[dict] | None = None) -> dict:
    """Write the artifact of `scheme` to `out` (see the module doc); its manifest."""
    import torch

    from data import load_splits
    from models.build import load_base_model
    from runtime.artifact import FORMAT, MANIFEST, HeadOf, TailOf, load_artifact, sha256_of
    if out.exists():
        raise CoInferError(f"--out {out} exists: choose a new folder (an artifact is never written over)")
    base = load_base_model(app).eval()
    weights = None
    if scheme.is_split:
        from database.scheme_weights import scheme_meta
        from runtime.weights import scheme_model
        model = scheme_model(app, scheme, base=base, train=finetune_missing)
        meta = scheme_meta(app, scheme) or {}
        weights = {"kind": "fine-tuned", "protocol": app.protocol.name, "sha256": meta.get("sha256"),
                   "top1": meta.get("top1")}
        head, tail = HeadOf(model), TailOf(model)
    else:
        weights = {"kind": "base", "checkpoint": app.checkpoint.name}
        head, tail = (base, None) if scheme.is_all_edge else (None, base)
    test = load_splits(app)[1]
    n_check = min(len(test), max(8, samples))
    x = torch.stack([test[i][0] for i in range(n_check)])
    with torch.inference_mode():
        a = head(x[:1]) if head is not None else x[:1]
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if out.parent.is_dir() else None))
    try:
        programs = {}
        for side, module, example in (("edge", head, x[:1]), ("cloud", tail, a)):
            if module is None:
                programs[side] = None
                continue
            with torch.no_grad(), warnings.catch_warnings():  # TorchScript: runtime/artifact.py says why
                warnings.simplefilter("ignore", FutureWarning)
                traced = torch.jit.trace(module.eval(), example, check_trace=False)
                traced.save(str(tmp / f"{side}.pt"))
            programs[side] = {"file": f"{side}.pt", "sha256": sha256_of(tmp / f"{side}.pt")}
        if samples:
            import numpy as np
            np.save(tmp / "samples.npy", x[:samples].numpy().astype(np.float32), allow_pickle=False)
            np.save(tmp / "labels.npy", np.array([int(test[i][1]) for i in range(min(samples, n_check))]),
                    allow_pickle=False)
        manifest = {
            "format": FORMAT, "app": app.name, "scheme": str(scheme), "codec": "bitpack",
            "bits": scheme.b if scheme.is_split else (8 if scheme.is_all_cloud else None),
            "input": {"shape": [app.in_channels, app.input_size, app.input_size], "dtype": "float32",
                      "transform": {"dataset": app.dataset.get("name"), **{k: app.dataset[k] for k in
                                                                            ("resize", "mean", "std")
                                                                            if k in app.dataset}}},
            "num_classes": app.num_classes, "programs": programs, "weights": weights, "profiles": profile or [],
            "exported": {"at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                         "torch": torch.__version__, "python": platform.python_version(),
                         "machine": platform.machine()},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        check_roundtrip(load_artifact(tmp), head, tail, x)
        os.replace(tmp, out)  # the folder appears whole or not at all
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def check_roundtrip(artifact, head, tail, x) -> float:
    """The largest absolute difference between the exported programs and the in-process head and tail on `x`
    (a batch of several images: the programs take any batch size); CoInferError over TOLERANCE."""
    import torch
    with torch.inference_mode():
        worst = 0.0
        a = head(x) if head is not None else x
        if head is not None:
            worst = max(worst, float((artifact.split.head(x) - a).abs().max()))
        if tail is not None:
            worst = max(worst, float((artifact.split.tail(a) - tail(a)).abs().max()))
    if not worst <= TOLERANCE:
        raise CoInferError(f"the exported programs differ from the model by {worst:.3g} (> {TOLERANCE:g}): "
                           "nothing written")
    return worst


def _profiles(app: App, text: str | None, storage: str | None) -> list[dict]:
    """Where the profiles of (edge, cloud) were measured, when the database has them."""
    from database.provenance import model_uses
    from database.registry import open_registry_store
    from devices.spec import parse_device_pair
    edge, cloud = parse_device_pair(text)
    store = open_registry_store(storage)
    if store is None:
        return []
    try:
        return [u.to_json() for u in model_uses(store, app, (edge or app.edge_device, cloud or app.cloud_device))]
    except CoInferError:
        return []


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not 0 <= args.samples <= 1024:
        raise CoInferError(f"--samples must be in 0..1024, got {args.samples}")
    app = load_app(args.app)
    scheme = Scheme.parse(args.scheme)
    manifest = export(app, scheme, Path(args.out), samples=args.samples, finetune_missing=args.finetune_missing,
                      profile=_profiles(app, args.latency_profile, args.storage))
    if args.json:
        print(json.dumps(manifest, separators=(",", ":")))
    else:
        sides = [s for s, p in manifest["programs"].items() if p]
        print(f"{app.name} {scheme}: {' + '.join(f'{s}.pt' for s in sides)} and manifest.json in {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
