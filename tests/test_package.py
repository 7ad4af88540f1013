"""The pack loads the way ComfyUI loads it: a package imported from its folder path, with no
`comfy` module anywhere, and the core never imports ComfyUI."""

import ast
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pack_imports_as_a_package_from_its_folder_without_comfyui():
    spec = importlib.util.spec_from_file_location("custom_nodes_echodistill", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    assert module.WEB_DIRECTORY == "./web" and (ROOT / "web").is_dir()
    assert not hasattr(module, "comfy_entrypoint")  # its V3 nodes only where ComfyUI's comfy_api is (test_nodes.py)
    assert not any(name == "comfy" or name.startswith("comfy.") for name in sys.modules)


COMFYUI_PACKAGES = ("comfy", "comfy_api", "folder_paths", "nodes", "server", "comfy_extras", "comfy_execution")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(level, module) of every import in a file: level 0 absolute, 1 `from .x`, 2 `from ..x`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(0, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found += [(node.level, node.module or "")]
            if not node.module:  # from . import x
                found += [(node.level, alias.name) for alias in node.names]
    return found


def test_the_core_never_imports_comfyui():
    for path in (ROOT / "echodistill_core").rglob("*.py"):
        assert not any(level == 0 and name.split(".")[0] in COMFYUI_PACKAGES
                       for level, name in imported_modules(path)), path


def test_one_node_module_touches_comfyui():
    touching = sorted(path.name for path in (ROOT / "nodes").glob("*.py")
                      if any(level == 0 and name.split(".")[0] in COMFYUI_PACKAGES for level, name in imported_modules(path)))
    assert touching == ["comfyui_host.py"]


def test_the_method_never_imports_the_lab():
    """The tiny world, its judge and yardstick (echodistill_core/lab) are a proving ground: only the command
    line, the run recipe (which knows the bundled tiny models by their folder) and the paper's metrics (whose
    judge stands in for DINO on the tiny models) reach into it."""
    users = sorted(path.name for path in (ROOT / "echodistill_core").glob("*.py")
                   if any(level == 1 and name.split(".")[0] == "lab" for level, name in imported_modules(path)))
    assert users == ["cli.py", "paper_metrics.py", "recipe.py"]


def test_registry_metadata_names_the_pack_and_its_host():
    """What the Comfy registry reads from pyproject.toml: a node id without "comfyui", an icon that exists in
    the repository, the ComfyUI it needs, classifiers ComfyUI's own parser accepts (comfy_config), and the
    same requirements as requirements.txt."""
    import re

    from packaging.specifiers import SpecifierSet
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: pip's copy of tomli
        from pip._vendor import tomli as tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project, comfy = data["project"], data["tool"]["comfy"]
    assert "comfyui" not in project["name"].lower()
    assert re.fullmatch(r"[a-z][a-z0-9]*([._-][a-z0-9]+)*", project["name"]) and len(project["name"]) < 100
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert project["license"] == {"file": "LICENSE"} and (ROOT / "LICENSE").is_file()
    assert comfy["PublisherId"] and comfy["DisplayName"]
    repository = project["urls"]["Repository"].removeprefix("https://github.com/")
    prefix = f"https://raw.githubusercontent.com/{repository}/main/"
    assert comfy["Icon"].startswith(prefix) and (ROOT / comfy["Icon"].removeprefix(prefix)).is_file()
    assert "0.3.64" in SpecifierSet(comfy["requires-comfyui"])  # the version the real-host tests run
    systems = [c.removeprefix("Operating System :: ") for c in project["classifiers"] if c.startswith("Operating System :: ")]
    accelerators = [c.removeprefix("Environment :: ") for c in project["classifiers"] if c.startswith("Environment ::")]
    assert systems and all(s.startswith(("Microsoft", "POSIX", "MacOS", "OS Independent")) for s in systems)
    assert accelerators and set(accelerators) <= {"GPU :: NVIDIA CUDA", "GPU :: AMD ROCm", "GPU :: Intel Arc",
                                                  "NPU :: Huawei Ascend", "GPU :: Apple Metal"}
    requirements = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    assert project["dependencies"] == requirements
    assert not any(name.split(">")[0].split("=")[0].strip() in ("torch", "torchvision") for name in requirements)


def test_the_published_archive_leaves_out_tests_benchmarks_and_tools_only():
    patterns = [line.strip() for line in (ROOT / ".comfyignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert {"tests/", "bench/", "tools/"} <= set(patterns)
    loaded = ["__init__.py", "nodes/", "echodistill_core/", "web/", "example_workflows/", "docs/", "LICENSE",
              "README.md", "requirements.txt", "pyproject.toml"]
    assert not [(pattern, path) for pattern in patterns for path in loaded if path.startswith(pattern.lstrip("/"))]
