"""Base of the typed config schemas, and reading YAML into them with readable errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from countrytune.errors import UserError


class Schema(BaseModel):
    """Base of every config schema: unknown keys are errors, field docstrings are the docs."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: a folder, not a YAML file") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a text file (byte {e.start} is not UTF-8); give a YAML file") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def read_json(path: Path, schema: type[BaseModel], remedy: str = "") -> Any:
    """A JSON object file validated against `schema`; a file that is missing, not JSON, not an
    object or breaks the schema is a UserError naming the file (and the field). `remedy`: what
    the user does about a file that is not JSON (e.g. "; rerun the prep that wrote it")."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e}){remedy}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return validate(schema, data, str(path))


def validate(schema: type[BaseModel], data: dict[str, Any], where: str) -> Any:
    """Validate `data` against `schema`, turning pydantic's errors into one readable message."""
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        lines = [f"{where}: invalid {schema.__name__}:"]
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"  {loc}: {err['msg']}")
        raise UserError("\n".join(lines)) from None
