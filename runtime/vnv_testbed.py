"""KETI's VnV over the real split runtime: both choices run as requests on the testbed's shaped link.

    report = measure_testbed((greedy_app, greedy_scheme), (budgeted_app, budgeted_scheme), RunConfig(app.edge, 1.0, 50))

As `runtime.vnv.measure` (the same n test images, index 0..n-1 of the test split, alternating image
by image after a warm-up, the same `VnVReport`), but each image is a real request: `runtime.testbed`
puts the cloud server (`python -m runtime.cloud`, hosting both choices' apps) in the cloud network
namespace behind a veth link shaped by tc tbf at `config.bandwidth` (without root: loopback and the
edge client's own token bucket, and the report's notes say so); one `runtime.edgeworker` process per
app runs in the edge namespace, loads its model and weights at full speed, connects, warms up, then
runs at `config.edge`'s speed of this CPU (`dilate`, as the in-process path). Per request the edge client
(`runtime.client.EdgeClient.infer`) times it: t = edge (head + quantise/pack) + the round trip (transfer
+ the cloud's unpack and compute); top-1 is the class it returns (all-edge: its own), right when it
is the image's label. The stages reported: edge = edge + pack, link = transfer (round trip minus the
cloud's own time), cloud = unpack + compute; bytes = the request frame plus its segments' transport
headers (`compress.activation.frame_on_wire`). The link's RTT is the veth's (the apps' `rtt_s` is not added).
A split scheme's fine-tuned weights are made here first when missing (`runtime.weights`), so the edge
head and the cloud tail load the same file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping

from apps import App
from cli.errors import CoInferError
from compress.activation import frame_on_wire
from compress.scheme import Scheme
from runtime.vnv import RunConfig, VnVReport, alternate, check_images, summarise


def measure_testbed(baseline: tuple[App, Scheme], advanced: tuple[App, Scheme], config: RunConfig,
                    refs: Mapping[str, str] | None = None) -> VnVReport:
    """Both choices over the testbed (see the module doc). `refs`: app name -> the name or YAML path the cloud
    and edge processes load it from (default: the name, a shipped app)."""
    from runtime.edgeworker import EdgeWorker
    from runtime.testbed import Testbed, TestbedConfig
    from runtime.weights import scheme_model
    choices = (baseline, advanced)
    for app, scheme in choices:
        if scheme.is_split:
            scheme_model(app, scheme, train=True)  # what the benchmark measures: made here when missing
    ref = {app.name: (refs or {}).get(app.name, app.name) for app, _ in choices}  # one edge worker per app
    schemes = {name: list(dict.fromkeys(str(s) for a, s in choices if a.name == name)) for name in ref}
    edge = config.edge if not config.edge.slowed else config.edge.model_copy(update={"emulation": "dilate"})
    tb_config = TestbedConfig(config.bandwidth, edge, link="tbf", keep_warm=config.keep_warm)
    with Testbed(",".join(ref.values()), tb_config) as tb, contextlib.ExitStack() as stack:
        workers = {}
        for name in ref:
            try:
                workers[name] = stack.enter_context(EdgeWorker(tb, schemes[name], ref[name]))
            except RuntimeError as exc:  # it died before saying ready; its own error is on stderr above
                raise CoInferError(f"the edge worker of {name}: {exc}") from None
            check_images(name, workers[name].ready["test_images"], config.images)
        rows = alternate([_request(workers[app.name], app, scheme) for app, scheme in choices], config)
        how = describe(tb.mode, config)
        notes = tuple(tb.notes)
    return VnVReport(summarise(baseline, rows[0]), summarise(advanced, rows[1]), how, notes)


def _request(worker, app: App, scheme: Scheme) -> Callable[[int], tuple]:
    def row(i: int) -> tuple:
        try:
            answer = worker.infer(str(scheme), i)
        except RuntimeError as exc:  # the worker died; its traceback is on stderr above
            raise CoInferError(f"the edge worker of {app.name} ({scheme}, image {i}): {exc}") from None
        t = answer["timings"]
        return (t["total_s"], answer["classes"][0] == answer["label"], t["edge_s"] + t["pack_s"], t["transfer_s"],
                t["cloud_unpack_s"] + t["cloud_compute_s"], frame_on_wire(app.link, t["bytes_up"]) if t["bytes_up"]
                else 0)
    return row


def describe(mode: str, config: RunConfig) -> str:
    """How the testbed measured, for the report: its link and the edge's speed."""
    link = "netns+tbf" if mode == "netns" else "loopback+token bucket"
    edge = f"edge at speed {config.edge.speed:g}" if config.edge.slowed else "edge at this CPU's speed"
    return f"testbed: {link} at {config.bandwidth:g} Mbps, {edge}"
