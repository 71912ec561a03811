"""The package layout: library modules at the root, the program in ``training``, tools in
``tools``, and no arrow from the library up to the program."""

import ast
import pathlib
import subprocess
import sys

import gradmix_jax

PACKAGE = pathlib.Path(gradmix_jax.__file__).parent
#: The program: the trainer and its modules, the tools, and the two command-line entry points.
PROGRAM = ("training", "tools", "train.py", "evaluate.py")


def _library_files():
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[0] not in PROGRAM:
            yield path


def _imported_modules(path: pathlib.Path):
    """Absolute names of every module ``path`` imports (at any depth, lazy imports included)."""
    package = ".".join(("gradmix_jax", *path.relative_to(PACKAGE).parent.parts))
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the file's package
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def test_the_library_never_imports_the_program():
    files = list(_library_files())
    assert {p.name for p in files} >= {"mixing.py", "files.py", "sources.py", "__init__.py"}
    upward = [
        f"{path.relative_to(PACKAGE.parent)} imports {name}"
        for path in files
        for name in _imported_modules(path)
        if name.startswith(("gradmix_jax.training", "gradmix_jax.tools"))
    ]
    assert upward == []


def test_the_package_has_no_import_machinery():
    """Modules are imported by their real paths; nothing is added to ``sys.meta_path``."""
    code = "import sys; n = len(sys.meta_path); import gradmix_jax; print(len(sys.meta_path) - n)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"
    assert not hasattr(gradmix_jax, "trainer") and "files" in dir(gradmix_jax)


def test_import_gradmix_jax_stays_light():
    """Importing the package imports neither the program nor jax."""
    code = (
        "import sys, gradmix_jax; print(sorted(m for m in sys.modules if m.startswith("
        "('jax', 'flax', 'gradmix_jax.'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_validation_checks_the_library_constants():
    from gradmix_jax import attribution, augment, losses, mixing
    from gradmix_jax.training import objectives, openset_eval, validation

    choices = validation.CHOICES
    assert choices["mixing.method"] is mixing.METHODS
    assert choices["gradmix.fill"] is mixing.FILL_MODES
    assert choices["gradmix.placement"] is mixing.PLACEMENTS
    assert choices["gradmix.ratio_of"] is mixing.RATIO_OF
    assert choices["gradmix.ratio_per"] is mixing.RATIO_PER
    assert choices["gradmix.normalize"] is attribution.NORMALIZE_MODES
    assert choices["gradmix.loss_weight"] is losses.LOSS_WEIGHTS
    assert choices["gradmix.attribution_loss"] is objectives.ATTRIBUTION_LOSSES
    assert choices["augment.preset"] is augment.PRESETS
    assert choices["eval.features"] is openset_eval.FEATURES
    assert choices["gradmix.box_size"] is mixing.BOX_SIZES
    assert choices["gradmix.noise_channels"] is mixing.NOISE_CHANNELS
    assert choices["gradmix.weight_area"] is mixing.AREAS
    assert choices["gradmix.normalize_at"] is attribution.NORMALIZE_AT
    assert choices["gradmix.mixed_loss"] is losses.MIXED_LOSSES
    assert validation.OBJECTIVES is objectives.OBJECTIVES
