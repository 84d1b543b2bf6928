"""The package as a user installs it: a wheel carries the registry, the recipes and the bundled zoo, and works from any
working directory with no network.

The wheel goes into a fresh virtual environment that reuses this interpreter's installed packages (torch included)
through a plain path in a ``.pth`` file. That path puts them on ``sys.path`` without running the ``.pth`` files there,
so the editable install of the checkout (a meta-path finder) stays out: the tests import the wheel's copy only.
"""

import os
import shutil
import site
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # build from a copy of the tree, so the build leaves nothing (build/, *.egg-info) in the checkout
    source = tmp_path_factory.mktemp("source") / "morphzoo"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "runs", "build", "dist", "*.egg-info",
                                                                  "__pycache__", ".*cache", "zoo/.*"))
    dist = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--disable-pip-version-check",
         "-q", "-w", str(dist), str(source)], cwd=dist, env=dict(os.environ))
    (path,) = dist.glob("morphzoo-*.whl")
    return path


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("venv")
    # no pip or setuptools of its own, which would shadow the reused ones; this interpreter's pip installs into it
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = root / "bin" / "python"
    venv_site = subprocess.run([python, "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True,
                               text=True, check=True).stdout.strip()
    (Path(venv_site) / "_reuse_host_packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    # dependencies resolve against the reused packages: pip needs no network
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--disable-pip-version-check", "-q",
         str(wheel)], cwd=root,
        env={**os.environ, "PIP_NO_INDEX": "1"})
    return root


@pytest.fixture
def user_env() -> dict[str, str]:
    """A user's shell: offline, no PYTHONPATH into the checkout, working in an unrelated empty folder."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MORPHZOO_REGISTRY")}
    return {**env, "HF_HUB_OFFLINE": "1", "MORPHZOO_OFFLINE": "1"}


def test_the_wheel_carries_the_registry_recipes_and_bundled_zoo(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {name.removeprefix("morphzoo/_shipped/") for name in names if name.startswith("morphzoo/_shipped/")}
    expected = {"checkpoints.yaml"} | {str(p.relative_to(ROOT)) for p in (ROOT / "recipes").rglob("*.yaml")} | {
        str(p.relative_to(ROOT)) for p in (ROOT / "zoo").glob("*/*") if not p.parent.name.startswith(".")}
    assert shipped == expected


def test_an_installed_wheel_loads_a_bundled_model_offline_from_any_folder(venv, user_env, tmp_path):
    code = ("import morphzoo, torch; model = morphzoo.load('spiralnet-anny-face'); "
            "mesh = torch.as_tensor(model.template.vertices, dtype=torch.float32)[None]; "
            "print(morphzoo.__file__); print(tuple(model(mesh).shape))")
    output = run([venv / "bin" / "python", "-c", code], cwd=tmp_path, env=user_env).stdout.splitlines()
    assert output[0].startswith(str(venv)), f"imported {output[0]}, not the wheel's copy"
    assert output[1].startswith("(1, ") and output[1].endswith(", 3)")

    listing = run([venv / "bin" / "morphzoo", "list", "--pretrained"], cwd=tmp_path, env=user_env).stdout
    assert "spiralnet-anny-face" in listing and "not-published" not in listing


def test_an_unknown_name_suggests_the_closest(venv, user_env, tmp_path):
    for command, expected in ((["fit", "-c", "spiralnett"], "did you mean spiralnet"),
                              (["info", "spiralnet-any-face"], "did you mean spiralnet-anny-face")):
        result = subprocess.run([venv / "bin" / "morphzoo", *command], cwd=tmp_path, env=user_env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode != 0 and expected in result.stderr, result.stderr[-2000:]


@pytest.mark.slow
def test_an_installed_wheel_fits_a_packaged_recipe_by_name_and_a_users_own(venv, user_env, tmp_path):
    fit = [venv / "bin" / "morphzoo", "fit", "--trainer.fast_dev_run=true", "--data.init_args.size=tiny"]
    result = run([*fit[:2], "-c", "spiralnet", *fit[2:]], cwd=tmp_path, env=user_env)
    output = result.stdout + result.stderr
    assert "val/error_mm" in output
    assert "Tip:" not in output and "Warning:" not in output, f"third-party noise in the output:\n{output}"

    own = tmp_path / "mine" / "own.yaml"  # a user's recipe, relative to the working directory
    own.parent.mkdir()
    own.write_text((ROOT / "recipes" / "pca.yaml").read_text().replace("latent_dim: 8", "latent_dim: 7"))
    assert "latent_dim: 8" in (ROOT / "recipes" / "pca.yaml").read_text()
    config = run([*fit[:2], "-c", "mine/own.yaml", "--print_config"], cwd=tmp_path, env=user_env).stdout
    assert "class_path: morphzoo.methods.PCA" in config and "latent_dim: 7" in config
    result = run([*fit[:2], "-c", "mine/own.yaml", *fit[2:]], cwd=tmp_path, env=user_env)
    assert "val/error_mm" in result.stdout + result.stderr


def test_an_installed_wheel_locks_its_cache_and_names_malformed_files(venv, user_env, tmp_path):
    (tmp_path / "broken.yaml").write_bytes((ROOT / "recipes" / "pca.yaml").read_bytes()[:200] + b"\xff\xfe: [")
    code = textwrap.dedent("""
        import numpy as np
        from morphzoo.cache import cache_dir, cached_arrays
        from morphzoo.errors import MorphzooError
        from morphzoo.recipes import parse
        print(float(cached_arrays("sampling", "entry", lambda: {"x": np.arange(4.0)})["x"].sum()))
        print(sorted(p.name for p in (cache_dir() / "sampling").iterdir()))
        try:
            parse("broken.yaml")
        except MorphzooError as error:
            print(type(error).__name__, "broken.yaml" in str(error))
        parse("decoupled-gan-anny-bu3dfe")  # a shipped recipe, by name
    """)
    env = {**user_env, "MORPHZOO_CACHE": str(tmp_path / "cache")}
    output = run([venv / "bin" / "python", "-c", code], cwd=tmp_path, env=env).stdout.splitlines()
    assert output == ["6.0", "['.entry.npz.lock', 'entry.npz']", "RecipeError True"]


@pytest.mark.slow
def test_an_installed_wheel_resumes_a_fit_from_its_last_checkpoint(venv, user_env, tmp_path):
    fit = [venv / "bin" / "morphzoo", "fit", "-c", "spiralnet", "--data.init_args.size=tiny",
           "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false"]
    run([*fit, "--trainer.max_epochs=1"], cwd=tmp_path, env=user_env)
    result = run([*fit, "--trainer.max_epochs=2", "--ckpt_path", "last"], cwd=tmp_path, env=user_env)
    restored = [line for line in (result.stdout + result.stderr).splitlines() if "Restored all states" in line]
    assert restored and restored[0].endswith("runs/spiralnet/version_0/checkpoints/last.ckpt"), result.stderr[-3000:]
    assert [p.name for p in (tmp_path / "runs" / "spiralnet").iterdir()] == ["version_0"]  # the same run continued


def test_an_installed_wheel_fits_a_raw_scan(venv, user_env, tmp_path):
    code = textwrap.dedent("""
        import numpy as np, trimesh, morphzoo
        model = morphzoo.load("pca-anny-face")
        mesh = trimesh.Trimesh(model.template.vertices * 1000, model.template.faces, process=False)
        mesh.export("scan.ply")
    """)
    run([venv / "bin" / "python", "-c", code], cwd=tmp_path, env=user_env)
    result = run([venv / "bin" / "morphzoo", "fit-scan", "pca-anny-face", "scan.ply", "--steps", "20"], cwd=tmp_path,
                 env=user_env)
    assert "scan units per metre" in result.stdout and (tmp_path / "scan-registered.ply").is_file()


def test_the_wheel_carries_the_explorers_page_and_vendored_three_js(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    static = ROOT / "morphzoo" / "explorer" / "static"
    expected = {f"morphzoo/explorer/static/{p.relative_to(static)}" for p in static.rglob("*") if p.is_file()}
    assert expected and expected <= names


def test_an_installed_wheel_exports_onnx_and_serves_the_explorer(venv, user_env, tmp_path):
    pytest.importorskip("onnxruntime", reason="the [onnx] extra is missing")
    result = run([venv / "bin" / "morphzoo", "export-onnx", "pca-anny-face", "onnx"], cwd=tmp_path, env=user_env)
    assert "onnxruntime matches PyTorch" in result.stdout and (tmp_path / "onnx" / "decoder.onnx").is_file()
    code = textwrap.dedent("""
        import threading, urllib.request, morphzoo
        from morphzoo.explorer import ExplorerServer, ExplorerSession
        server = ExplorerServer(ExplorerSession(morphzoo.load("pca-anny-face")), port=0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        for path in ("", "static/explorer.js", "static/vendor/three/three.module.min.js"):
            assert urllib.request.urlopen(server.url + path).status == 200, path
        server.shutdown()
        print("served")
    """)
    assert "served" in run([venv / "bin" / "python", "-c", code], cwd=tmp_path, env=user_env).stdout
