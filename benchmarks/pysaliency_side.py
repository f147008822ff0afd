"""pysaliency's side of ``bench_metrics.py --vs-pysaliency``: run in pysaliency's own virtual environment.

Usage: ``python pysaliency_side.py CASES.npz``, then one command per line on stdin: ``time I`` scores
case I with pysaliency's seven image metrics, each timed alone, and answers one JSON line ``{"seconds":
{name: [wall, thread CPU], ...}, "values": {...}}``; ``quit`` ends. ``python pysaliency_side.py
--check`` prints the versions of pysaliency and numpy. It imports numpy, threadpoolctl and pysaliency only (not salgan).

The seven calls are what pysaliency's model methods run per image, without its Stimuli/Fixations wrappers
(so its figures are a lower bound): ``general_roc`` of the fixated values against the unfixated pixels
with the fixated values as thresholds (``AUC_Judd`` without jitter), against all pixels (``AUC``,
``nonfixations='uniform'``) and against the other images' fixations (``sAUC``); ``NSS`` averaged over
fixations; ``CC``; ``MIT_KLDiv``; ``SIM``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import sys
import time
import types
import warnings

import numpy as np
from threadpoolctl import threadpool_limits

# pysaliency's own modules, without its package __init__, which imports its external models' frameworks
# (torch for DeepGaze) that no metric uses.
_package = types.ModuleType("pysaliency")
_package.__path__ = list(importlib.util.find_spec("pysaliency").submodule_search_locations)
sys.modules["pysaliency"] = _package
from pysaliency.metrics import CC, NSS, SIM, MIT_KLDiv  # noqa: E402
from pysaliency.roc import general_roc  # noqa: E402
from pysaliency.saliency_map_models import _get_unfixated_values  # noqa: E402

warnings.simplefilter("ignore", DeprecationWarning)  # np.trapz inside general_roc
OTHER_IMAGES = 10  # as bench_metrics.py


def judd(smap, ys, xs, oys, oxs, gt):
    positives = smap[ys, xs].astype(float)
    return general_roc(positives, _get_unfixated_values(smap, ys, xs).astype(float), judd=1)[0]


def auc_all_pixels(smap, ys, xs, oys, oxs, gt):
    return general_roc(smap[ys, xs].astype(float), smap.flatten().astype(float), judd=0)[0]


def sauc(smap, ys, xs, oys, oxs, gt):
    return general_roc(smap[ys, xs].astype(float), smap[oys, oxs].astype(float), judd=0)[0]


def nss(smap, ys, xs, oys, oxs, gt):
    return float(np.mean(NSS(smap.copy(), xs, ys)))


METRICS = {
    "auc_judd": judd,
    "auc_borji": auc_all_pixels,  # pysaliency's all-pixel AUC: the exact counterpart of AUC-Borji
    "auc_shuffled": sauc,
    "nss": nss,
    "cc": lambda smap, ys, xs, oys, oxs, gt: CC(smap, gt),
    "kld": lambda smap, ys, xs, oys, oxs, gt: MIT_KLDiv(smap, gt),
    "sim": lambda smap, ys, xs, oys, oxs, gt: SIM(smap, gt),
}


def main() -> int:
    if sys.argv[1] == "--check":
        print(json.dumps({"pysaliency": importlib.metadata.version("pysaliency"), "numpy": np.__version__}))
        return 0
    threadpool_limits(1)
    cases = np.load(sys.argv[1])
    coords, offsets = cases["coords"], cases["offsets"]
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            break
        i = int(command[1])
        smap, gt = cases["saliency"][i], cases["gt"][i]
        own = coords[offsets[i] : offsets[i + 1]]
        other = coords[offsets[i + 1] : offsets[i + 1 + OTHER_IMAGES]]  # the next images' fixations
        args = (smap, own[:, 0], own[:, 1], other[:, 0], other[:, 1], gt)
        seconds, values = {}, {}
        for name, metric in METRICS.items():
            wall, cpu = time.perf_counter(), time.thread_time()
            values[name] = float(metric(*args))
            seconds[name] = [time.perf_counter() - wall, time.thread_time() - cpu]
        print(json.dumps({"seconds": seconds, "values": values}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
