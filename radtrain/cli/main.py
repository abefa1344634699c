"""The ``radtrain`` command line: the entry layer (DESIGN.md §2).

Commands import services lazily, inside the command; ``up`` runs each service
as its own process so none is imported here.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from infra.bus.connection import mask_url
from infra.settings import Settings
from radtrain.cli import replay, status, watch
from radtrain.cli.client import EXIT_CODES_HELP, JsonOpt
from radtrain.cli.datasets import datasets_app
from radtrain.cli.dlq_commands import dlq_app
from radtrain.cli.keys import keys_app
from radtrain.cli.presets import presets_app
from radtrain.cli.tasks import tasks_app
from radtrain.cli.zoo import zoo_app

app = typer.Typer(no_args_is_help=True, add_completion=True, epilog=EXIT_CODES_HELP,
                  help="radtrain: train medical-imaging models from events.\n\n"
                       "Commands that print data take --json (machine-readable output on "
                       "stdout); errors go to stderr. Shell completion: radtrain "
                       "--install-completion (bash, zsh, fish, PowerShell).")
infra_app = typer.Typer(no_args_is_help=True, help="Streams, consumers and KV buckets.")
schemas_app = typer.Typer(no_args_is_help=True, help="The contracts as JSON Schema.")
app.add_typer(infra_app, name="infra")
app.add_typer(schemas_app, name="schemas")
app.add_typer(keys_app, name="keys")
app.add_typer(datasets_app, name="datasets")
app.add_typer(dlq_app, name="dlq")
app.add_typer(zoo_app, name="zoo")
app.add_typer(presets_app, name="presets")
app.add_typer(tasks_app, name="tasks")
app.command("replay")(replay.replay)
app.command("status")(status.status)
app.command("watch")(watch.watch)
console = Console()


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version as v

        typer.echo(f"radtrain {v('radtrain')}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True,
        help="Print the version and exit.")] = False) -> None:
    """radtrain: train medical-imaging models from events."""


@infra_app.command("apply")
def infra_apply(as_json: JsonOpt = False) -> None:
    """Create or update the streams, consumers and KV buckets; safe to run any time."""
    from radtrain.stack import apply_streams

    changes = asyncio.run(apply_streams(Settings()))
    if as_json:
        typer.echo(json.dumps([{"kind": c.kind, "name": c.name, "action": c.action}
                               for c in changes], indent=1))
        return
    for change in changes:
        console.print(f"{change.kind:<9} {change.name:<10} {change.action}")


@schemas_app.command("export")
def schemas_export(out_dir: Path) -> None:
    """Write the JSON Schema of every event, the TrainingSpec, TaskRecord and API models."""
    from radtrain.cli.schemas_export import export_all

    for path in export_all(out_dir):
        console.print(str(path))


CLUSTER_HELP = ("Clustered topology on loopback: three NATS nodes (R3), SeaweedFS as S3, "
                "two gateways, two handlers processes and --runners runners.")


@app.command()
def up(
    port: Annotated[int, typer.Option(help="Gateway port (0: any free port).")] = 8080,
    nats_port: Annotated[int, typer.Option(help="nats-server port (0: any).")] = 4222,
    cluster: Annotated[bool, typer.Option("--cluster", help=CLUSTER_HELP)] = False,
    runners: Annotated[int, typer.Option(min=1, max=8, help="Runners (--cluster).")] = 2,
) -> None:
    """Start NATS, apply the streams, and run gateway, handlers and one runner until Ctrl-C."""
    settings = Settings(gateway_port=port, nats_port=nats_port)
    if cluster:
        _up_cluster(settings, runners)
        return
    from radtrain.stack import start_stack

    stack = start_stack(settings)
    stop = _stop_on_signals()
    console.print(f"API key (tenant {stack.settings.default_tenant}): [bold]{stack.api_key}[/]\n"
                  f"  curl -H 'Authorization: Bearer {stack.api_key}' "
                  f"{stack.gateway_url}/v1/tasks")
    console.print(f"radtrain is up: gateway [bold]{stack.gateway_url}[/], "
                  f"NATS {mask_url(stack.settings.nats_url)}, store {stack.settings.store_dir}")
    console.print(f"web console: [bold]{stack.console_url}[/] (sign in with the API key)")
    _print_upstream_help(stack.settings)
    console.print(f"logs in {stack.settings.data_dir.resolve() / 'logs'}; Ctrl-C stops everything")
    _serve_until_stopped(stack, stop)


def _up_cluster(settings: Settings, runners: int) -> None:
    """``radtrain up --cluster``: like ``up``, every process named, until Ctrl-C."""
    from radtrain.cluster import start_cluster
    from radtrain.stack import console_url

    cluster = start_cluster(settings, runners=runners)
    stop = _stop_on_signals()
    s = cluster.settings
    console.print(f"API key (tenant {s.default_tenant}): [bold]{cluster.api_key}[/]")
    console.print(f"radtrain cluster is up: gateways {', '.join(cluster.gateway_urls)}\n"
                  f"  NATS {s.nats_url} (JetStream R{s.stream_replicas}, nodes "
                  f"{', '.join(n.name for n in cluster.nats.nodes)}), S3 {s.s3_endpoint_url} "
                  f"bucket {s.s3_bucket}\n  processes {', '.join(cluster.services)}")
    console.print("web console: " + ", ".join(f"[bold]{console_url(u)}[/]"
                                              for u in cluster.gateway_urls))
    _print_upstream_help(s)
    console.print(f"logs in {s.data_dir / 'logs'}; Ctrl-C stops everything")
    _serve_until_stopped(cluster, stop)


def _stop_on_signals() -> dict[str, bool]:
    """``{"now": True}`` once SIGINT or SIGTERM arrives."""
    stop = {"now": False}
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    return stop


def _serve_until_stopped(stack: Any, stop: dict[str, bool]) -> None:
    """Until a signal (or a service dies: exit 1), then stop every process of ``stack``
    (an embedded stack or a cluster)."""
    try:
        while not stop["now"]:
            dead = stack.dead_services()
            if dead:
                console.print(f"[red]{dead[0]} exited[/]:\n{stack.log_tail(dead[0])}")
                raise typer.Exit(1)
            time.sleep(0.5)
    finally:
        console.print("stopping ...")
        stack.stop()


def _print_upstream_help(settings: Settings) -> None:
    """How an upstream system publishes tasks over NATS (README: Connecting an upstream system)."""
    from radtrain.servers.nats_auth import upstream_subject

    console.print(
        f"Upstream systems: task.requested CloudEvents on {mask_url(settings.nats_url)}\n"
        f"  subject      {upstream_subject('<tenant>')}\n"
        f"  credentials  radtrain keys nats-user --tenant <tenant>  (NKey seed file)\n"
        f"  inbox        nats.connect(..., inbox_prefix=\"_INBOX_<user>\")  (publish acks)\n"
        f"  NATS identities of this stack: {settings.data_dir.resolve() / 'nats'}")


@app.command()
def demo(
    url: Annotated[str | None, typer.Option(help="Use a running gateway instead.")] = None,
    cases: Annotated[int | None, typer.Option(min=20, max=5000,
                                              help="Cases to generate (default: the recipe's).")
                     ] = None,
    seed: Annotated[int, typer.Option()] = 0,
    api_key: Annotated[str | None, typer.Option(
        help="Key for --url (default: RADTRAIN_API_KEY); the embedded stack makes its own.")
                       ] = None,
    flow: Annotated[str, typer.Option(
        help="general (head CT), specialized (pneumothorax preset on chest DX) or retrain "
             "(general, then a retrain of it on new data).")] = "general",
    cluster: Annotated[bool, typer.Option("--cluster", help=CLUSTER_HELP)] = False,
    keep_up: Annotated[bool, typer.Option(
        "--keep-up", help="After the demo keep the embedded stack (and its web console) up "
                          "until Ctrl-C (what `make run` does).")] = False,
) -> None:
    """Synthetic DICOM dataset → task over HTTP → progress → metrics and artifacts."""
    from radtrain.cli.demo import FLOWS, run_flow, serve_console
    from radtrain.stack import start_stack

    if flow not in FLOWS:
        console.print(f"[red]--flow must be one of {', '.join(FLOWS)}[/]")
        raise typer.Exit(2)

    started = time.monotonic()
    stack: Any = None
    settings = Settings()
    secret = settings.api_key.get_secret_value() if settings.api_key else None
    token = api_key or secret
    if url is None and cluster:
        from radtrain.cluster import start_cluster

        stack = start_cluster(settings.model_copy(update={"gateway_port": 0, "nats_port": 0}))
        settings, url, token = stack.settings, stack.gateway_urls[-1], stack.api_key
        console.print(f"cluster up: gateways {', '.join(stack.gateway_urls)}, "
                      f"NATS {settings.nats_url} (R{settings.stream_replicas}), "
                      f"S3 {settings.s3_endpoint_url}; the task goes through {url}")
    elif url is None:
        stack = start_stack(settings.model_copy(update={"gateway_port": 0, "nats_port": 0}))
        settings, url, token = stack.settings, stack.gateway_url, stack.api_key
        console.print(f"embedded stack up: gateway {url}, NATS {mask_url(settings.nats_url)}")
        console.print(f"API key (tenant {settings.default_tenant}): {token}")
    try:
        record = run_flow(flow, url, token, settings, cases, seed, console)
        if keep_up and stack is not None:
            console.print(f"demo finished in {time.monotonic() - started:.0f}s: "
                          f"task {record['state']}")
            serve_console(stack, console)
    finally:
        if stack is not None:
            stack.stop()
    console.print(f"demo finished in {time.monotonic() - started:.0f}s")
    if record["state"] != "completed":
        raise typer.Exit(1)


@app.command("version")
def version() -> None:
    """The versions of radtrain and Python, as JSON."""
    from importlib.metadata import version as v

    console.print(json.dumps({"radtrain": v("radtrain"), "python": sys.version.split()[0]}))


def main() -> None:
    app()
