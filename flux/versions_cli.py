"""``flux versions`` and ``flux aliases``: the version operations of a running server, from a shell.

Each command is one AdminService call; errors print the server's message and exit 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import grpc

from flux import remote
from flux_api.v1 import admin_service_pb2 as pb
from flux_api.v1.admin_service_pb2_grpc import AdminServiceStub


def add_parsers(commands: Any) -> None:
    versions = commands.add_parser(
        "versions",
        help="list, load, activate, pin, roll back or unload index versions on a running server",
        description="Version operations of a running server (AdminService).",
    )
    actions = versions.add_subparsers(dest="versions_action", required=True, metavar="ACTION")
    for name, needs_version, doc in (
        ("list", False, "every version of the index, its state and gate results"),
        ("load", True, "load and gate a version without activating it"),
        ("activate", True, "make a version the one that answers (loading it first if needed)"),
        ("pin", True, "activate a version and hold it whatever the policy says"),
        ("unpin", False, "give control back to the version policy (its loads continue in the background)"),
        ("rollback", False, "pin the newest version older than the active one"),
        ("unload", True, "release a loaded version that is not active"),
    ):
        action = actions.add_parser(name, help=doc, description=doc)
        _connection(action, timeout=300.0)
        action.add_argument("--index", required=True, help="index name")
        if needs_version:
            action.add_argument("--version", type=int, required=True, dest="index_version", help="version number")
        action.set_defaults(run=_run_version_action)

    aliases = commands.add_parser("aliases", help="list aliases and the traffic of each arm")
    _connection(aliases, timeout=10.0)
    aliases.set_defaults(run=_run_aliases)


def _connection(parser: argparse.ArgumentParser, timeout: float) -> None:
    remote.add_options(parser, timeout=timeout)


def _call(args: argparse.Namespace, rpc: Callable[[AdminServiceStub], Any]) -> Any:
    try:
        with remote.connect(args) as client:
            return rpc(AdminServiceStub(client.channel))
    except grpc.RpcError as exc:
        print(f"flux: {exc.code().name}: {exc.details()}", file=sys.stderr)
    except (ValueError, OSError) as exc:
        remote.fail("versions" if hasattr(args, "versions_action") else "aliases", exc)
    return None


def _run_version_action(args: argparse.Namespace) -> int:
    action, index, timeout = args.versions_action, args.index, args.timeout
    version = getattr(args, "index_version", 0)
    started = time.perf_counter()
    calls: dict[str, Callable[[AdminServiceStub], Any]] = {
        "list": lambda s: s.ListVersions(pb.ListVersionsRequest(index=index), timeout=timeout),
        "load": lambda s: s.LoadVersion(pb.LoadVersionRequest(index=index, version=version), timeout=timeout),
        "activate": lambda s: s.ActivateVersion(
            pb.ActivateVersionRequest(index=index, version=version), timeout=timeout
        ),
        "pin": lambda s: s.PinVersion(pb.PinVersionRequest(index=index, version=version), timeout=timeout),
        "unpin": lambda s: s.PinVersion(pb.PinVersionRequest(index=index, version=0), timeout=timeout),
        "rollback": lambda s: s.RollbackVersion(pb.RollbackVersionRequest(index=index), timeout=timeout),
        "unload": lambda s: s.UnloadVersion(pb.UnloadVersionRequest(index=index, version=version), timeout=timeout),
    }
    response = _call(args, calls[action])
    if response is None:
        return 1
    elapsed = time.perf_counter() - started
    if action == "list":
        print(
            f"index {response.index}: active {response.active_version or '-'}, pinned {response.pinned_version or '-'}"
        )
        _print_versions(response.versions)
    elif action == "rollback":
        print(
            f"rolled back {index} from version {response.previous_version} "
            f"to {response.version.version} in {elapsed:.2f}s (pinned; `flux versions unpin` to undo)"
        )
    elif action == "unpin":
        print(
            f"{index}: unpinned; the version policy decides again "
            "(versions it loads come in the background: `flux versions list` shows them)"
        )
    else:
        info = response.version
        print(f"{index} version {info.version}: {_state(info.state)} after {elapsed:.2f}s")
    return 0


def _print_versions(versions: Any) -> None:
    print(
        f"{'version':>8}  {'state':<10} {'in flight':>9} {'load s':>7} {'MiB':>8}  {'recall':>6} {'overlap':>7}  error"
    )
    for v in versions:
        gate = v.gate if v.HasField("gate") else None
        recall = f"{gate.recall:.3f}" if gate and gate.canary_queries else "-"
        overlap = f"{gate.overlap:.3f}" if gate and gate.canary_queries else "-"
        print(
            f"{v.version:>8}  {_state(v.state):<10} {v.in_flight:>9} {v.load_seconds:>7.2f} "
            f"{v.artifact_bytes / 2**20:>8.1f}  {recall:>6} {overlap:>7}  {v.error}"
        )


def _run_aliases(args: argparse.Namespace) -> int:
    response = _call(args, lambda s: s.ListAliases(pb.ListAliasesRequest(), timeout=args.timeout))
    if response is None:
        return 1
    print(f"{'alias':<20} {'arm':<30} {'weight':>6} {'requests':>9} {'handler ms':>10}")
    for alias in response.aliases:
        for arm in alias.arms:
            target = f"{arm.index}@{arm.version}" if arm.version else arm.index
            print(f"{alias.name:<20} {target:<30} {arm.weight:>6g} {arm.requests:>9} {arm.mean_latency_ms:>10.3f}")
    print(
        "handler ms: the mean time the server spent routing and answering a request (its search included); "
        "a client also waits for transport, queueing and serialization"
    )
    return 0


def _state(state: int) -> str:
    return pb.VersionState.Name(state).removeprefix("VERSION_STATE_").lower()  # type: ignore[arg-type]
