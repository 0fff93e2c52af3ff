"""``compsearch serve``: the HTTP API and web page over an index directory."""
from __future__ import annotations

from pathlib import Path

import click

from compsearch.mapping.commands.options import device_option
from compsearch.mapping.errors import CompsearchError, warn

TOKEN_ENV = "COMPSEARCH_TOKEN"


@click.command("serve")
@click.argument("index_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but a loopback address exposes the collection to the network.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port (0: any free one).")
@click.option("--token", envvar=TOKEN_ENV, show_envvar=True,
              help="Require this bearer token on every request (the page: open /?token=TOKEN once).")
@click.option("--no-token", is_flag=True,
              help="Serve a non-loopback --host without a token (anyone who reaches it can search and view).")
@click.option("--show-paths", is_flag=True,
              help="Give clients the files' absolute paths on this machine (default: relative to the collection).")
@click.option("--root", "roots", multiple=True, type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="Folder images may be served from (repeatable; default: the collection folders the index "
                   "records). Needed when a list names files outside its own folder.")
@click.option("--cache-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Folder for thumbnails (default: $COMPSEARCH_CACHE/thumbnails).")
@click.option("--max-upload-mb", default=20.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Largest reference image accepted, in MB.")
@device_option
def serve_command(index_dir: Path, host: str, port: int, token: str | None, no_token: bool, show_paths: bool,
                  roots: tuple[Path, ...], cache_dir: Path | None, max_upload_mb: float, device: str) -> None:
    """Serve the index in INDEX_DIR over HTTP: a web page at / and a JSON API under /api
    (health, info, search, browse, explain, images/ID, thumbnails/ID; schema at
    /api/openapi.json).

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
    if token and no_token:
        raise CompsearchError("--no-token and a token (--token or $COMPSEARCH_TOKEN) contradict each other",
                              "drop one of them")
    if exposed and not token and not no_token:
        raise CompsearchError(f"--host {host} exposes the collection to the network, and no token is set",
                              f"set --token (or ${TOKEN_ENV}), or pass --no-token to serve it to anyone who can "
                              "reach this machine")
    if exposed:
        warn(f"listening on {host}: anyone who can reach this machine {'and has the token ' if token else ''}"
             "can search and view the indexed images")
    sock = bind(host, port)  # a taken port fails before the models load
    app = create_app(index_dir, token=token, max_upload_bytes=int(max_upload_mb * (1 << 20)), roots=list(roots),
                     cache_dir=cache_dir, allowed_hosts=None if exposed else LOOPBACK_NAMES, device=device,
                     show_paths=show_paths)
    # The token is never printed: terminals, logs and screen shares keep what they show.
    click.echo(f"serving {index_dir} at {url(sock)}"
               + (" (open it once as ?token=TOKEN, with the token it was started with)" if token else ""))
    serve(app, sock)
