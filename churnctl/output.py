"""Where churnctl writes: results on stdout, progress and messages on stderr (so results can be piped)."""
from __future__ import annotations

from google.protobuf import json_format
from rich.console import Console

out = Console()
err = Console(stderr=True)


def print_json(message) -> None:
    out.print_json(json_format.MessageToJson(message, preserving_proto_field_name=True))
