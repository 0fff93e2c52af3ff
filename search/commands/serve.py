"""``compsearch serve``: the HTTP API and web page over an index directory."""
from __future__ import annotations

from pathlib import Path

import click

from compsearch.mapping.commands.options import device_option
from compsearch.mapping.errors import warn

TOKEN_ENV = "COMPSEARCH_TOKEN"


@click.command("serve")
@click.argument("index_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but a loopback address exposes the collection to the network.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port (0: any free one).")
@click.option("--token", envvar=TOKEN_ENV, show_envvar=True,
              help="Require this bearer token on every request (the page: open /?token=TOKEN once).")
@click.option("--root", "roots", multiple=True, type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="Folder images may be served from (repeatable; default: the collection folders the index "
                   "records). Needed when a list names files outside its own folder.")
@click.option("--cache-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Folder for thumbnails (default: $COMPSEARCH_CACHE/thumbnails).")
@click.option("--max-upload-mb", default=20.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Largest reference image accepted, in MB.")
@device_option
def serve_command(index_dir: Path, host: str, port: int, token: str | None, roots: tuple[Path, ...],
                  cache_dir: Path | None, max_upload_mb: float, device: str) -> None:
    """Serve the index in INDEX_DIR over HTTP: a web page at / and a JSON API under /api
    (health, info, search, images/ID, thumbnails/ID; schema at /api/openapi.json).

    \b
    Only files recorded in the index are served, by id, and only from inside the
    collection. Models load before the server starts listening.

    \b
    Example:
      compsearch serve photos.index            # then open http://127.0.0.1:8000/
    """
    from compsearch.search.server.app import create_app
    from compsearch.search.server.guards import LOOPBACK_NAMES, is_loopback
    from compsearch.search.server.run import bind, serve, url

    exposed = not is_loopback(host)
    if exposed:
        warn(f"listening on {host}: anyone who can reach this machine can search and view the indexed images",
             None if token else f"set --token or ${TOKEN_ENV} to require a token")
    sock = bind(host, port)  # a taken port fails before the models load
    app = create_app(index_dir, token=token, max_upload_bytes=int(max_upload_mb * (1 << 20)), roots=list(roots),
                     cache_dir=cache_dir, allowed_hosts=None if exposed else LOOPBACK_NAMES,
                     device=device)
    click.echo(f"serving {index_dir} at {url(sock)}{f'?token={token}' if token else ''}")
    serve(app, sock)
