"""The README is a newcomer's first door: its Python example runs (on the bundled tiny models, for a few steps),
its module table names every module there is, and it cites nothing outside the repository."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def python_examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def substitute(example: str, values: dict[str, object]) -> str:
    """The example with each `NAME = ...` setting line given its value here instead (every one must be there)."""
    for name, value in values.items():
        example, count = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", example, flags=re.M)
        assert count == 1, f"the README's example sets {name} once at the start of a line"
    return example


def test_the_python_example_runs_on_the_bundled_tiny_models(tmp_path, monkeypatch):
    from echodistill_core.lab import world
    from echodistill_core.lab.demo import demo_concept_images
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for index, image in enumerate(demo_concept_images()):
        Image.fromarray((image.permute(1, 2, 0) * 255).round().byte().numpy()).save(photos / f"{index}.png")
    examples = python_examples()
    assert len(examples) == 1
    code = substitute(examples[0], {"TEACHER": str(world.TEACHER_FOLDER), "STUDENT": str(world.STUDENT_FOLDER),
                                    "PHOTOS": str(photos), "PRESET": "tiny", "STEPS": 2,
                                    "OUT": str(tmp_path / "my-dog.safetensors")})
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme_example"}
    exec(compile(code, "README.md", "exec"), namespace)
    assert (tmp_path / "my-dog.safetensors").is_file()
    assert namespace["trainer"].step == 2 and namespace["config"].batch_size <= 2  # the 12 GB preset's batch
    assert tuple(namespace["beach"].shape) == (1, world.IMAGE_SIZE, world.IMAGE_SIZE, 3)


def test_the_module_table_lists_every_module():
    listed = set(re.findall(r"`((?:lab/)?\w+\.py)`", README))
    core = ROOT / "echodistill_core"
    modules = {path.relative_to(core).as_posix() for path in core.rglob("*.py")
               if path.name != "__init__.py" and "__pycache__" not in path.parts}
    assert not sorted(modules - listed), "add these modules to the README's module table"
    nodes = {path.name for path in (ROOT / "nodes").glob("*.py") if path.name != "__init__.py"}
    assert not sorted(nodes - listed), "name these nodes/ modules in the README"


@pytest.mark.parametrize("path", [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))],
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_docs_cite_no_issue_numbers_and_nothing_outside_the_repository(path):
    text = path.read_text()
    assert not re.search(r"\bissue #?\d+", text, flags=re.I)
    assert "../shared" not in text
    for link in re.findall(r"\]\(([^)#]+)", text):  # relative links lead to files of the repository
        if not re.match(r"[a-z]+:", link):
            target = (path.parent / link).resolve()
            assert target.is_relative_to(ROOT) and target.exists(), link


def test_the_readme_links_the_method():
    assert "](docs/method.md)" in README
