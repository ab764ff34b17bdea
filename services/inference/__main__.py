"""`python -m services.inference` — serves the alias MODEL_ALIAS (production|staging) on that alias's ports."""
from __future__ import annotations

import sys

from services.common import logs
from services.common.auth_client import remote_verifier
from services.common.server import serve_until_signalled
from services.common.settings import Settings
from services.inference import app


def main() -> int:
    settings = Settings.from_env()
    if settings.model_alias not in ("production", "staging"):
        print(f"MODEL_ALIAS must be production or staging, got {settings.model_alias!r}", file=sys.stderr)
        return 2
    logs.configure(f"inference-{settings.model_alias}", settings.log_level)
    try:
        parts = app.build_parts(settings)
    except ValueError as exc:  # a bad setting (e.g. RETENTION_MOVES): refuse to start, say which
        print(exc, file=sys.stderr)
        return 2
    inference = app.start(settings, remote_verifier(settings), parts)
    serve_until_signalled(inference.host, on_stop=inference.close)
    return 0


if __name__ == "__main__":
    sys.exit(main())
