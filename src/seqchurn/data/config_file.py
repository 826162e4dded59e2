"""Read a data config (``conf/data/*.yaml``) outside Hydra, for the argparse commands.

``seqchurn drift`` and ``seqchurn reidentify`` take a data config as a YAML path or as a
name under ``conf/data`` (``online_retail``). The ``${paths.*}`` interpolations that these
files use resolve against ``conf/paths/default.yaml``, as they do under Hydra.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from seqchurn.conf_utils import CONFIG_DIR, register_resolvers
from seqchurn.data.schema import InputError


def find_data_config(reference: str) -> Path:
    """Return the YAML file that ``reference`` names: a path, or a config name under ``conf/data``."""
    path = Path(reference)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise InputError("data config not found", file=str(path), hint="Pass a YAML file or a config name under conf/data")
        return path
    named = CONFIG_DIR / "data" / f"{reference}.yaml"
    if named.is_file():
        return named
    available = sorted(p.stem for p in (CONFIG_DIR / "data").glob("*.yaml"))
    raise InputError(f"no data config named {reference!r}; conf/data has {available}", hint="Pass a YAML file path or one of those names")


def read_data_config(reference: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Return the resolved data config named by ``reference`` as a plain dict.

    ``overrides`` are dot-list assignments applied to the data config, such as
    ``sources.0.path=/data/log.parquet``.
    """
    register_resolvers()
    path = find_data_config(reference)
    try:
        data = OmegaConf.load(path)
        if overrides:
            data = OmegaConf.merge(data, OmegaConf.from_dotlist(list(overrides)))
        root = OmegaConf.create({"paths": OmegaConf.load(CONFIG_DIR / "paths" / "default.yaml"), "data": data})
        resolved = OmegaConf.to_container(root.data, resolve=True)
    except OmegaConfBaseException as exc:
        raise InputError(f"invalid data config: {exc}", file=str(path)) from None
    except (OSError, ValueError) as exc:  # YAML syntax errors are ValueErrors of PyYAML
        raise InputError(f"cannot read the data config: {exc}", file=str(path)) from None
    if not isinstance(resolved, dict):
        raise InputError(f"Expected the data config to be a mapping, but got a {type(resolved).__name__}", file=str(path))
    return resolved
