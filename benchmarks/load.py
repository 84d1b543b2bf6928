"""Cold and warm ``morphzoo.load`` time of a bundled checkpoint.

Uses the first available bundled entry of ``checkpoints.yaml``; when none is built yet, a SpiralNet++ with the paper's
defaults on a 2562-vertex icosphere is exported (fp16) into a temporary registry instead. Each measurement runs in a
fresh Python process (imports excluded, timed around ``morphzoo.load`` only):

- cold: empty morphzoo cache (no verified hashes, no cached QEM hierarchy or spirals);
- warm process: a new process after that (hashes are looked up by file stat, hierarchy and spirals come from the cache);
- warm, same process: later ``load`` calls in the same process (median of 5).

    python benchmarks/load.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

MEASURE = """
import json, sys, time
import morphzoo, morphzoo.zoo, morphzoo.methods
def timed():
    start = time.perf_counter()
    morphzoo.load(sys.argv[1], registry=sys.argv[2])
    return time.perf_counter() - start
first = timed()
print(json.dumps({"first": first, "again": sorted(timed() for _ in range(5))[2]}))
"""


def _tiny_registry(folder: Path) -> tuple[str, Path]:
    import trimesh

    from morphzoo.mesh.template import Template
    from morphzoo.methods import SpiralNetPlusPlus
    from morphzoo.zoo import hub
    from morphzoo.zoo import registry as zoo
    from morphzoo.zoo.checkpoint import write_checkpoint

    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.1)
    model = SpiralNetPlusPlus(template=Template(vertices=sphere.vertices, faces=sphere.faces, name="icosphere4"))
    name = "spiralnet-bench-icosphere"
    checkpoint = write_checkpoint(model, folder / "zoo" / name, fp16=True)
    (folder / "recipes").mkdir()
    (folder / "recipes" / "spiralnet.yaml").write_text((ROOT / "recipes" / "spiralnet.yaml").read_text())
    entry = yaml.safe_load((ROOT / "checkpoints.yaml").read_text())["models"][1] | {
        "name": name, "aliases": [], "status": "available", "metrics": {"reconstruction/mean_mm": 0.0},
        "num_params": sum(p.numel() for p in model.parameters()),
        "weights": {"bundled": f"zoo/{name}", "files": {p.name: vars(hub.describe_file(p))
                                                        for p in checkpoint.iterdir()}},
        "provenance": {"morphzoo_version": "bench", "commit": "bench", "seed": 0, "epochs": 0, "wall_time_s": 0.0,
                       "note": "untrained, for load timing only"}}
    path = folder / "checkpoints.yaml"
    zoo.write_registry({"schema_version": 1, "models": [entry]}, path)
    return name, path


def _run(name: str, registry: Path, cache: Path) -> dict:
    env = {**os.environ, "MORPHZOO_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", MEASURE, name, str(registry)], env=env, capture_output=True,
                            text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from morphzoo.zoo import registry as zoo

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        registry = zoo.load_registry()
        bundled = [e for e in registry.entries.values() if e.weights is not None and e.weights.bundled]
        name, path = (bundled[0].name, registry.path) if bundled else _tiny_registry(tmp / "registry")
        size = sum(f.stat().st_size for f in (path.parent / "zoo" / name).iterdir())
        cold, warm, again = [], [], []
        for repeat in range(args.repeats):
            cache = tmp / f"cache{repeat}"
            first = _run(name, path, cache)
            second = _run(name, path, cache)
            cold.append(first["first"])
            warm.append(second["first"])
            again.append(second["again"])
    print(f"{name}: {size / 1e6:.2f} MB on disk ({'bundled' if bundled else 'self-built, untrained'})")
    for label, values in (("cold (empty caches)", cold), ("warm, new process", warm), ("warm, same process", again)):
        print(f"  {label:22s} median {sorted(values)[len(values) // 2] * 1000:8.1f} ms  "
              f"(runs: {', '.join(f'{v * 1000:.1f}' for v in values)})")


if __name__ == "__main__":
    main()
