"""Processes killed with SIGKILL in the middle of every stage that writes to disk leave nothing a later run trusts.

For each stage: one uninterrupted run gives the reference; then, each time in a fresh location, the stage is killed
when it writes its first file and at 25 % and 60 % of the reference's duration, what it left is checked (a file
under its final name must be complete), and the next run must succeed and reproduce the reference bit for bit with no
stale temporary left (:func:`tests.reliability.processes.survives_kills`).
"""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from morphzoo.mesh.io import write_mesh
from tests.reliability.processes import run_to_end, survives_kills, tree_digest
from tests.synthetic import sphere_template


def cache_env(location: Path) -> dict[str, str]:
    return {"MORPHZOO_CACHE": str(location / "cache")}


def check_stage(tmp_path: Path, code: str, env_for=cache_env, target: str = "cache", ignore: tuple[str, ...] = (),
                temporary: str = "*.tmp"):
    code = textwrap.dedent(code)
    reference_location = tmp_path / "reference"
    seconds = run_to_end(code, env_for(reference_location))
    reference = tree_digest(reference_location / target, ignore)
    assert reference, "the stage wrote nothing"
    report = survives_kills(tmp_path, code, env_for, reference, seconds, target=target, ignore=ignore,
                            temporary=temporary)
    assert report.interrupted >= 1, f"no kill landed while the stage ran ({seconds:.2f} s): {report.left}"
    print(f"{report.interrupted}/{report.kills} kills stopped the stage unfinished ({seconds:.2f} s uninterrupted); "
          f"left: {'; '.join(report.left)}")  # shown with pytest -rP: the README's figures
    return report


@pytest.mark.slow
def test_generating_an_anny_dataset_survives_kills(tmp_path):
    check_stage(tmp_path, """
        from morphzoo.data.synth.hand import load_anny_hand
        print("go", flush=True)
        load_anny_hand("tiny")
    """)


def test_reading_a_raw_dataset_into_the_cache_survives_kills(tmp_path):
    template = sphere_template(3)
    rng = np.random.default_rng(0)
    raw = tmp_path / "raw"
    for i in range(150):
        write_mesh(raw / f"mesh_{i:03d}.ply", template.vertices + rng.normal(0, 1e-3, template.vertices.shape),
                   template.faces)
    check_stage(tmp_path, f"""
        from morphzoo.data.folder import read_mesh_folder
        print("go", flush=True)
        read_mesh_folder({str(raw)!r})
    """)


def test_building_sampling_matrices_and_spirals_survives_kills(tmp_path):
    check_stage(tmp_path, """
        from morphzoo.mesh.sampling import mesh_hierarchy
        from morphzoo.mesh.spirals import neural3dmm_spirals, spiralnet_spirals
        from tests.synthetic import sphere_template
        template = sphere_template(5)
        print("go", flush=True)
        hierarchy = mesh_hierarchy(template, (4, 4, 4, 4))
        for level in hierarchy.templates:
            spiralnet_spirals(level, 9)
            neural3dmm_spirals(level, 2)
    """)


@pytest.fixture(scope="module")
def lightning_checkpoint(tmp_path_factory):
    from tests.zoo.test_registry import train_tiny_lightning_checkpoint

    return train_tiny_lightning_checkpoint(tmp_path_factory.mktemp("run"))[0]


def test_exporting_a_checkpoint_folder_survives_kills(tmp_path, lightning_checkpoint):
    check_stage(tmp_path, f"""
        import os
        from morphzoo.cli import main
        print("go", flush=True)
        main(["export", {str(lightning_checkpoint)!r}, os.environ["EXPORT_TO"], "--name", "spiralnet-tiny-spheres",
              "--fp16", "--dataset", "spheres", "--recipe", "recipes/sphere.yaml",
              "--class-path", "morphzoo.methods.SpiralNetPlusPlus"])
    """, env_for=lambda location: {**cache_env(location), "EXPORT_TO": str(location / "out" / "exported")},
        target="out")


def test_zoo_build_survives_kills(tmp_path):
    from tests.zoo.test_registry import registry_entry, write_registry_file

    def env_for(location: Path) -> dict[str, str]:
        if not (location / "registry" / "checkpoints.yaml").exists():
            write_registry_file(location / "registry", [registry_entry("spiralnet-tiny-spheres")])
        return {**cache_env(location), "REGISTRY": str(location / "registry" / "checkpoints.yaml")}

    # config.json and the registry hold the build's wall time; the weights and every other field must match
    check_stage(tmp_path, """
        import os
        from morphzoo.zoo.build import build_entry
        print("go", flush=True)
        build_entry("spiralnet-tiny-spheres", registry=os.environ["REGISTRY"], samples=20, pairs=50)
    """, env_for=env_for, target="registry", ignore=("config.json", "checkpoints.yaml"))
    entries = []
    for location in sorted(tmp_path.glob("*/registry")):
        entry = yaml.safe_load((location / "checkpoints.yaml").read_text())["models"][0]
        entry["provenance"].pop("wall_time_s")
        entry["weights"]["files"].pop("config.json")  # its record hashes the wall time; model.safetensors' stays
        entries.append(entry)
    assert len(entries) == 4 and all(entry == entries[0] for entry in entries)
    assert entries[0]["status"] == "available"


def test_a_hub_download_survives_kills(tmp_path):
    from morphzoo.zoo import hub
    from tests.zoo.test_hub import COMMIT, REPO, FakeHub

    payload = np.random.default_rng(0).bytes(3_000_000)
    fake = FakeHub({"model.safetensors": payload})
    fake.chunk_delay = 0.01  # 64 KiB every 10 ms: about half a second for the file, so kills land mid-stream
    record = hub.FileRecord(sha256=hashlib.sha256(payload).hexdigest(), size=len(payload))
    try:
        report = check_stage(tmp_path, f"""
            import os
            from morphzoo.zoo import hub
            record = hub.FileRecord(sha256={record.sha256!r}, size={record.size})
            print("go", flush=True)
            hub.fetch_verified({REPO!r}, "model.safetensors", {COMMIT!r}, record, endpoint={fake.url!r},
                               cache_dir=os.environ["HUB_CACHE"])
        """, env_for=lambda location: {**cache_env(location), "HUB_CACHE": str(location / "hub")}, target="hub",
            ignore=(".incomplete",), temporary="*.incomplete")  # huggingface_hub's own partial-download name
    finally:
        fake.stop()
    assert report.kills == 3
    for location in tmp_path.glob("kill-*"):
        files = list((location / "hub").rglob("model.safetensors"))
        assert [p.read_bytes() == payload for p in files] == [True]
