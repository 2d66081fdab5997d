"""The scale-out stack on one machine: `infra/local-cluster up|down|status|env|dvc-remote`.

`main` parses those arguments, runs the action and prints its result; its exit status is
0 on success, 1 on a `ClusterError` or processes left after `down`, 3 when `status`
finds a service stopped."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from shortlist.cluster.base import ClusterError
from shortlist.cluster.dvc import dvc_remote
from shortlist.cluster.lifecycle import down, status, up
from shortlist.cluster.state import Cluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infra/local-cluster", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["up", "down", "status", "env", "dvc-remote"])
    parser.add_argument("repo", nargs="?", help="dvc-remote: the DVC repository (default .)")
    parser.add_argument(
        "--state-dir",
        default=os.environ.get("SHORTLIST_CLUSTER_DIR", ".shortlist/cluster"),
        help="where the cluster keeps its data, logs, pid files and secrets "
        "(default $SHORTLIST_CLUSTER_DIR or .shortlist/cluster)",
    )
    parser.add_argument("--params", help="params file the DAGs start from (default params.yaml)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per service start")
    parser.add_argument("--json", action="store_true", help="status: as JSON")
    args = parser.parse_args(argv)
    try:
        if args.action == "up":
            result = up(args.state_dir, args.params, args.timeout)
            _print_status(result)
        elif args.action == "down":
            result = down(args.state_dir)
            if args.json:
                print(json.dumps(result))
            return 1 if result["still_running"] else 0
        elif args.action == "status":
            result = status(args.state_dir)
            if args.json:
                print(json.dumps(result, indent=1))
            else:
                _print_status(result)
            return 0 if all(s["running"] for s in result["services"].values()) else 3
        elif args.action == "env":
            c = Cluster(args.state_dir)
            for k, v in c.client_env(c.state()).items():
                print(f"export {k}={_shell_quote(v)}")
        else:
            print(dvc_remote(args.state_dir, args.repo or "."))
    except ClusterError as exc:
        print(f"local-cluster: {exc}", file=sys.stderr)
        return 1
    return 0


def _shell_quote(value: str) -> str:
    import shlex

    return shlex.quote(value)


def _print_status(result: dict[str, Any]) -> None:
    for name, s in result["services"].items():
        print(f"{name:13s} {'running (pid ' + str(s['pid']) + ')' if s['running'] else 'stopped'}")
    if "urls" in result:
        logins = result["logins"]
        print(
            f"Airflow UI/API {result['urls']['airflow']}   user admin   password {logins['airflow'][1]}"
        )
        reviewer = logins.get("mlflow_reviewer", ["reviewer", "?"])
        print(
            f"MLflow UI      {result['urls']['mlflow']}   user {reviewer[0]}   password {reviewer[1]}"
        )
        print(f"S3             {result['urls']['s3']}   (infra/local-cluster env prints the keys)")
        print(f"params         {result['params_file']}")
        print(f"logs           {result['logs']}")
