"""Administer API keys: ``python -m api.admin {create,list,add-credits,set-rate-limit,revoke}``.

Reads the same settings as the gateway (``REDIS_URL``, ``KEY_PREFIX``); without ``REDIS_URL``,
while ``make run`` runs, those of that farm (``var/local-farm.json``). A new key's secret
is printed once, at creation; Redis keeps only its SHA-256.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from shared.keys import KeyStore
from shared.local_farm import settings_for_tools
from shared.pricing import format_credits, to_milli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m api.admin", description="Manage API keys.")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True)
    create.add_argument("--credits", type=float, default=0.0, help="initial balance")
    create.add_argument("--rate-limit", type=int, default=0, help="requests per minute (0: default)")
    commands.add_parser("list", help="list keys (never their secrets)")
    add = commands.add_parser("add-credits", help="add (or with a negative amount, remove) credits")
    add.add_argument("key_id")
    add.add_argument("credits", type=float)
    rate = commands.add_parser("set-rate-limit", help="requests per minute for one key (0: default)")
    rate.add_argument("key_id")
    rate.add_argument("per_minute", type=int)
    revoke = commands.add_parser("revoke", help="revoke a key; its requests get 401")
    revoke.add_argument("key_id")
    return parser


def run(argv: Sequence[str], keys: KeyStore, out: TextIO) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "create":
            key, record = keys.create(args.name, to_milli(args.credits), args.rate_limit)
            out.write(
                f"created key {record.id} ({record.name}), balance {format_credits(record.balance_milli)}\n"
            )
            out.write(f"{key}\n(shown once: store it now)\n")
        elif args.command == "list":
            out.write(f"{'id':10} {'name':20} {'balance':>12} {'rate/min':>9} {'revoked':>8}\n")
            for record in keys.list():
                rate = str(record.rate_limit or "default")
                out.write(
                    f"{record.id:10} {record.name[:20]:20} {format_credits(record.balance_milli):>12} "
                    f"{rate:>9} {'yes' if record.revoked else 'no':>8}\n"
                )
        elif args.command == "add-credits":
            balance = keys.add_credits(args.key_id, to_milli(args.credits))
            out.write(f"key {args.key_id}: balance {format_credits(balance)}\n")
        elif args.command == "set-rate-limit":
            keys.set_rate_limit(args.key_id, args.per_minute)
            out.write(f"key {args.key_id}: rate limit {args.per_minute or 'default'} per minute\n")
        elif args.command == "revoke":
            keys.revoke(args.key_id)
            out.write(f"key {args.key_id}: revoked\n")
    except KeyError as exc:
        out.write(f"no key {exc.args[0]}\n")
        return 1
    return 0


def main() -> None:
    sys.exit(run(sys.argv[1:], KeyStore(settings_for_tools()), sys.stdout))


if __name__ == "__main__":
    main()
