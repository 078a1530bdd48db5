"""Writing one tiny model of any family, or a family's whole test set, by architecture."""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

from ..errors import OutputExistsError, Setting, UsageError
from . import calibrated, gemma4, glm4moe, qwen35
from . import family as spec_family
from .dims import ARCHES, DTYPES, FAMILY_ARCHES, HEADS
from .families import SPECS

# The module that builds each architecture's models; the other families are data (families.SPECS).
_FAMILIES: dict[str, ModuleType] = {**dict.fromkeys(ARCHES, qwen35), glm4moe.ARCH: glm4moe, gemma4.ARCH: gemma4}


def build_tiny_model(path: str | os.PathLike[str], *, arch: str = "qwen35", layout: str = "full",
                     head: str = "aligned", recurrent_layers_array: bool = True, dtype: str = "f32",
                     seed: int = 0, calibration: calibrated.Calibration | None = None) -> Path:
    """Write one tiny model to `path` (atomically) and return the path. See the docstrings of
    mtpgraft.testmodels (qwen35, qwen35moe) and of .glm4moe and .gemma4 (their layouts); with a
    `calibration`, the calibrated model of .calibrated (soft logits, its own head; `head` unused)."""
    family = _family(arch)
    layouts = spec_family.LAYOUTS if arch in SPECS else family.LAYOUTS
    for what, value, allowed in (("arch", arch, FAMILY_ARCHES), ("layout", layout, layouts),
                                 ("head", head, HEADS), ("dtype", dtype, DTYPES)):
        if value not in allowed:
            raise UsageError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")
    if calibration is not None:
        return calibrated.build(Path(path), arch=arch, layout=layout, dtype=dtype, seed=seed,
                                recurrent_layers_array=recurrent_layers_array, calibration=calibration)
    if family is qwen35 and arch not in SPECS:
        return qwen35.build(Path(path), arch=arch, layout=layout, head=head, dtype=dtype, seed=seed,
                            recurrent_layers_array=recurrent_layers_array)
    if not recurrent_layers_array:
        raise UsageError(f"recurrent_layers_array applies to qwen35/qwen35moe, not {arch}")
    if arch in SPECS:
        return spec_family.build(SPECS[arch], path, layout=layout, head=head, dtype=dtype, seed=seed)
    return family.build(path, layout=layout, head=head, dtype=dtype, seed=seed)


def _family(arch: str) -> ModuleType:
    """The module building `arch`'s models (qwen35's for an unknown arch, which the caller refuses)."""
    return _FAMILIES.get(arch, qwen35)


def variants_for(arch: str) -> dict[str, dict[str, object]]:
    """{variant name: build_tiny_model keyword arguments} of `arch`'s test set."""
    return SPECS[arch].test_set if arch in SPECS else _family(arch).TEST_SET


def variant_filename(arch: str, name: str, dtype: str = "f16") -> str:
    return f"tiny-{arch}-{name}-{dtype}.gguf"


def build_test_set(outdir: str | os.PathLike[str], *, arch: str = "qwen35", dtype: str = "f16",
                   seed: int = 0, force: bool = False) -> dict[str, Path]:
    """Write every variant of `arch`'s test set into `outdir` (created if missing); return {name: path}.

    OutputExistsError if one of the files exists, unless `force`.
    """
    outdir = Path(outdir)
    variants = variants_for(arch)
    paths = {name: outdir / variant_filename(arch, name, dtype) for name in variants}
    existing = [p.name for p in paths.values() if p.exists()]
    if existing and not force:
        more = f" and {len(existing) - 1} more test models" if len(existing) > 1 else ""
        raise OutputExistsError(f"{outdir} already holds {existing[0]}{more}; use ", Setting("force", True),
                                " to replace them")
    outdir.mkdir(parents=True, exist_ok=True)
    for name, path in paths.items():
        build_tiny_model(path, arch=arch, dtype=dtype, seed=seed, **variants[name])  # type: ignore[arg-type]
    return paths
