"""``python -m kubetune.serving.gateway``: a stand-alone gateway serving one fixed version.

For tests, benchmarks and trying it out; in a pod the serve-agent starts the gateway and tells
it which version is served as the alias moves.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from kubetune.serving.config import parse_listen
from kubetune.serving.gateway.process import run_gateway
from kubetune.serving.gateway.settings import (
    CONTENT_MODES,
    GatewaySettings,
    ServedVersion,
    StaticVersion,
)


def main(argv: list[str] | None = None) -> int:
    """Parse the flags and serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m kubetune.serving.gateway")
    parser.add_argument("--ollama", required=True, help="Ollama's base URL")
    parser.add_argument("--model", required=True, help="the model name (alias) clients call")
    parser.add_argument("--version", default=None, help="the served version's name")
    parser.add_argument("--digest", default=None, help="the served version's sha256")
    parser.add_argument("--db", required=True, type=Path, help="the prediction log (SQLite)")
    parser.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT")
    parser.add_argument("--content", choices=CONTENT_MODES, default="redacted")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    host, port = parse_listen(args.listen)
    settings = GatewaySettings(
        ollama_url=args.ollama,
        model=args.model,
        db_path=args.db,
        listen_host=host,
        listen_port=port,
        content=args.content,
    )
    return run_gateway(settings, StaticVersion(ServedVersion(args.version, args.digest)))


if __name__ == "__main__":
    sys.exit(main())
