"""What Crop Guardian's gate costs: the whole diagnosis against its models called directly.

In one process, on the same photos, alternating request by request (so a burst of other load
lands on both sides alike):

* baseline: what a diagnosis cannot do without, the ImageNet model and the mango model
  (mango-disease v1) each called once on the photo through their runtimes (`classify`), one after
  the other, no gate logic;
* diagnose: `DiagnosisService.diagnose` with the shipped crop_guardian.yaml: the ImageNet model
  and the leaf measurement side by side, the gate's signals, the mango model on the photo and its
  mirror in one batch, the plan.

Photos: 12 drawn mango-like leaves (they reach the mango model: the expensive path) and 12 real
photos that are not mango leaves (most refused before the mango model). Figures: p50/p95 per
side and the ratio of the p50s. Target (issue 11): the gate must not double /v1/diagnose, i.e.
diagnose p50 < 2x baseline p50 on the leaves.

    .venv/bin/python bench/diagnose_gate.py --models-dir var/test/models [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import DEFAULT_MODELS_DIR, machine, percentile, print_machine, table
from tests.fixtures.images import mango_like_leaf, not_mango_photos

from kaset.knowledge.schema import load_entries
from kaset.pipelines.diagnose import DiagnosisService
from kaset.registry.catalog import Catalog
from kaset.registry.manager import ModelManager
from kaset.registry.repository import ModelRepository
from kaset.runtimes.base import ImageClassifier


def _load() -> float:
    return os.getloadavg()[0]


async def main(args: argparse.Namespace) -> None:
    print_machine(machine())
    manager = ModelManager(Catalog.load(), ModelRepository(args.models_dir))
    service = DiagnosisService(manager, load_entries(), rng=random.Random(0))
    # Pin the A/B split to v1, so both sides run the same mango model.
    for slot in service.config.crops["mango"].slots:
        slot.variants = [v for v in slot.variants if v.model.endswith("@1")] or slot.variants[:1]
    gate = (await manager.get("efficientnet-lite0", "classify")).as_(ImageClassifier)
    mango = (await manager.get("mango-disease@1", "classify")).as_(ImageClassifier)
    leaves = [mango_like_leaf(seed=s, spots=(s * 7) % 30) for s in range(12)]
    others = [photo for _, photo in list(not_mango_photos())[:12]]
    groups = {"drawn leaves": leaves, "not mango": others}
    rows = []
    for group, photos in groups.items():
        baseline: list[float] = []
        full: list[float] = []
        statuses: dict[str, int] = {}
        for photo in photos:  # warm-up
            await service.diagnose(photo, crop="mango", language="en")
        for _ in range(args.rounds):
            for photo in photos:
                began = time.perf_counter()
                await asyncio.to_thread(gate.classify, [photo])
                await asyncio.to_thread(mango.classify, [photo])
                baseline.append((time.perf_counter() - began) * 1000)
                began = time.perf_counter()
                result = await service.diagnose(photo, crop="mango", language="en")
                full.append((time.perf_counter() - began) * 1000)
                statuses[result.status] = statuses.get(result.status, 0) + 1
        b50, f50 = float(np.median(baseline)), float(np.median(full))
        rows.append([group, len(full), f"{b50:.1f}", f"{percentile(baseline, 95):.1f}", f"{f50:.1f}",
                     f"{percentile(full, 95):.1f}", f"{f50 / b50:.2f}",
                     ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))])
        print(f"{group}: baseline p50 {b50:.1f} ms, diagnose p50 {f50:.1f} ms, ratio {f50 / b50:.2f}; "
              f"load {_load():.2f}", flush=True)
    await manager.close()
    print(table(["photos", "requests", "baseline p50", "p95", "diagnose p50", "p95", "ratio", "outcomes"], rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--rounds", type=int, default=10)
    asyncio.run(main(parser.parse_args()))
