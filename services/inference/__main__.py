"""`python -m services.inference` — serves the alias MODEL_ALIAS (production|staging) on that alias's ports, with
INFERENCE_WORKERS processes (default: one per core) sharing the gRPC port."""
from __future__ import annotations

import os
import shutil
import sys

from services.common.settings import Settings


def main() -> int:
    settings = Settings.from_env().with_bound_ports("auth", "monitoring")
    if settings.model_alias not in ("production", "staging"):
        print(f"MODEL_ALIAS must be production or staging, got {settings.model_alias!r}", file=sys.stderr)
        return 2
    if settings.inference_workers > 1:
        from services.inference import workers

        # prometheus_client picks its multiprocess mode when imported: set the folder before anything imports it.
        folder = workers.metrics_dir(settings, settings.model_alias)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
        from services.common import logs

        logs.configure(f"inference-{settings.model_alias}", settings.log_level)
        return workers.serve(settings, settings.inference_workers)
    from services.common import logs
    from services.common.auth_client import remote_verifier
    from services.common.server import serve_until_signalled
    from services.inference import app

    logs.configure(f"inference-{settings.model_alias}", settings.log_level)
    try:
        parts = app.build_parts(settings)
    except ValueError as exc:  # a bad setting (e.g. RETENTION_MOVES): refuse to start, say which
        print(exc, file=sys.stderr)
        return 2
    inference = app.start(settings, remote_verifier(settings), parts)
    serve_until_signalled(inference.host, settings, on_stop=inference.close)
    return 0


if __name__ == "__main__":
    sys.exit(main())
