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
    assert isinstance(module.NODE_CLASS_MAPPINGS, dict) and isinstance(module.NODE_DISPLAY_NAME_MAPPINGS, dict)
    assert module.WEB_DIRECTORY == "./web" and (ROOT / "web").is_dir()
    assert not any(name == "comfy" or name.startswith("comfy.") for name in sys.modules)


def test_the_core_never_imports_comfyui():
    for path in (ROOT / "echodistill_core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] in ("comfy", "comfy_api", "folder_paths", "nodes") for n in names), path
