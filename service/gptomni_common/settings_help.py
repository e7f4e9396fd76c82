"""`--help` and `--version` for both programs: the settings they read, from their models.

The settings models are the one source of what each program reads; listing their fields
here keeps `--help` from drifting from them.
"""

from __future__ import annotations

import argparse
from importlib import metadata

from pydantic import AliasChoices
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

DISTRIBUTION = "gptomni"


def version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # run from a source tree without installing
        return "unknown"


def environment_names(model: type[BaseSettings], name: str) -> list[str]:
    """The variables one field is read from, first the one that wins."""
    field = model.model_fields[name]
    if isinstance(field.validation_alias, AliasChoices):
        return [str(choice) for choice in field.validation_alias.choices if str(choice).isupper()]
    return [f"{model.model_config.get('env_prefix', '')}{name}".upper()]


def default_text(model: type[BaseSettings], name: str) -> str:
    field = model.model_fields[name]
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if value is None or value == [] or value == "":
        return "unset"
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return str(value)


def settings_epilog(model: type[BaseSettings]) -> str:
    rows = [(" or ".join(environment_names(model, name)), default_text(model, name)) for name in model.model_fields]
    width = max(len(variable) for variable, _ in rows)
    lines = [f"  {variable:<{width}}  {default}" for variable, default in rows]
    return "settings (environment variables, with their defaults; README \"Configuration\"):\n" + "\n".join(lines)


def add_help_and_version(parser: argparse.ArgumentParser, model: type[BaseSettings]) -> None:
    """`--version`, and the settings listed after the options in `--help`."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = settings_epilog(model)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
