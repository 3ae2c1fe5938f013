"""How long ``kdcache [CMD] --help`` (or any kdcache command line) takes, this checkout against another,
alternating rounds (a b a b ...).

A command's help and its usage errors need only its options; since the CLI imports the library inside the
command bodies they answer without torch, torchvision, zarr or numpy. Each mode runs the same probe in a fresh
interpreter from a folder outside both checkouts, with ``PYTHONPATH`` on an overlay of that checkout's
``kdcache/`` and ``cli/`` (as the editable install maps them), and records the wall time and which heavy modules
it imported.

    git worktree add /tmp/kdcache-old COMMIT
    python bench/cli_startup.py --other /tmp/kdcache-old          # bench/results/cli_startup.json
    python bench/cli_startup.py --other /tmp/kdcache-old --command="info CACHE.zarr" --json /tmp/info.json
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import write_json

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "zarr", "h5py", "numpy")
DEFAULT_COMMANDS = ("--help", "dump-teacher --help", "train-student --help", "info --help")
PROBE = ("import sys\nfrom kdcache.cli.main import main\nsys.argv = ['kdcache'] + sys.argv[1:]\ntry:\n    main()\n"
         f"except SystemExit:\n    pass\nprint('heavy=' + ','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n"
         "import kdcache.cli.main as m\nprint('from=' + m.__file__, file=sys.stderr)")


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--other", default=None, help="a checkout of another commit to compare with (git worktree add)")
    ap.add_argument("--command", dest="commands", action="append", default=None,
                    help="a kdcache command line to time, as one string (repeatable; --command='info c.zarr') "
                         f"[{'; '.join(DEFAULT_COMMANDS)}]")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", default="bench/results/cli_startup.json")
    args = ap.parse_args(argv)
    args.commands = args.commands or list(DEFAULT_COMMANDS)
    return args


def _overlay(checkout: Path, into: Path) -> Path:
    """``into/kdcache``: links to every entry of ``checkout/kdcache`` and ``cli`` -> ``checkout/cli``."""
    pkg = into / "kdcache"
    pkg.mkdir(parents=True)
    for entry in (checkout / "kdcache").iterdir():
        if entry.name not in ("cli", "__pycache__"):
            (pkg / entry.name).symlink_to(entry.resolve())
    (pkg / "cli").symlink_to((checkout / "cli").resolve())
    return into


def _commit(checkout: Path) -> str:
    res = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=checkout, capture_output=True, text=True)
    return res.stdout.strip() or "unknown"


def _once(command: str, root: Path, cwd: str) -> tuple[float, list[str], str]:
    env = dict(os.environ, PYTHONPATH=str(root))
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", PROBE, *shlex.split(command)], env=env, cwd=cwd,
                         capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - t0
    lines = dict(line.split("=", 1) for line in res.stderr.splitlines() if line.startswith(("heavy=", "from=")))
    if "from" not in lines or not res.stdout or "Error" in res.stderr:
        raise SystemExit(f"error: `kdcache {command}` failed under {root}: {res.stderr.strip()[-500:]}")
    return seconds, [m for m in lines["heavy"].split(",") if m], lines["from"]


def main() -> None:
    args = _args()
    with tempfile.TemporaryDirectory() as tmp:
        checkouts = {"this": REPO, **({"other": Path(args.other).resolve()} if args.other else {})}
        roots = {name: _overlay(path, Path(tmp) / name) for name, path in checkouts.items()}
        rows = {(c, name): {"seconds": [], "heavy": None} for c in args.commands for name in checkouts}
        for r in range(args.rounds):
            for c in args.commands:
                for name, root in roots.items():
                    seconds, heavy, origin = _once(c, root, tmp)
                    if not Path(origin).resolve().is_relative_to(checkouts[name].resolve()):
                        raise SystemExit(f"error: the {name} probe ran {origin}, not {checkouts[name]}'s code")
                    rows[(c, name)]["seconds"].append(seconds)
                    rows[(c, name)]["heavy"] = heavy
                    print(f"round {r + 1}/{args.rounds}  kdcache {c:<20} {name:<6} {seconds:6.2f} s  "
                          f"heavy: {','.join(heavy) or '-'}", flush=True)
    out = []
    width = max(len(c) for c in args.commands) + 9
    print(f"\n{'command':<{width}} {'mode':<6} {'commit':<8} {'median s':>9} {'this / other':>13}  heavy modules imported")
    for c in args.commands:
        this = statistics.median(rows[(c, "this")]["seconds"])
        for name in checkouts:
            med = statistics.median(rows[(c, name)]["seconds"])
            ratio = this / med if name == "other" else None
            out.append({"command": c, "mode": name, "commit": _commit(checkouts[name]), "median_s": med,
                        "rounds_s": rows[(c, name)]["seconds"], "heavy_imported": rows[(c, name)]["heavy"],
                        "this_over_other": ratio})
            print(f"{'kdcache ' + c:<{width}} {name:<6} {out[-1]['commit']:<8} {med:9.2f} "
                  f"{'' if ratio is None else format(ratio, '.3f'):>13}  {','.join(out[-1]['heavy_imported']) or '-'}")
    write_json(args.json, args, rows=out)


if __name__ == "__main__":
    main()
