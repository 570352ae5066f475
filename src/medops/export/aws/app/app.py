"""The CDK app of a medops project: `cdk synth`, `cdk deploy` (README.md).

Its parameters are the ``medops:`` keys of cdk.json's context; ``-c medops:KEY=VALUE`` on the
command line overrides one (CI passes ``-c medops:image_tag=COMMIT``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import aws_cdk as cdk

# beside this file in the exported folder, which is where `cdk` runs it
from medops_stack import (  # type: ignore[import-not-found,unused-ignore]
    MedopsStack,
    ParameterError,
    StackParams,
)


def main() -> None:
    app = cdk.App()
    context = {key: app.node.try_get_context(key) for key in _context_keys()}
    try:
        params = StackParams.from_context({k: v for k, v in context.items() if v is not None})
    except ParameterError as exc:
        sys.exit(f"error: {exc}")
    account, region = os.environ.get("CDK_DEFAULT_ACCOUNT"), os.environ.get("CDK_DEFAULT_REGION")
    # With credentials the stack is bound to that account and region; without (a plain
    # `cdk synth`), it is environment-agnostic.
    env = cdk.Environment(account=account, region=region) if account and region else None
    MedopsStack(app, params.stack_name, params, env=env)
    app.synth()


def _context_keys() -> list[str]:
    """The parameters' keys, and any other ``medops:`` key of cdk.json (a misspelt one is an
    error, not a silently ignored value)."""
    keys = [f"medops:{field.name}" for field in dataclasses.fields(StackParams)]
    written = json.loads(Path(__file__).with_name("cdk.json").read_text()).get("context", {})
    return keys + [k for k in written if k.startswith("medops:") and k not in keys]


if __name__ == "__main__":
    main()
