"""``makevl report``: train and compare every system on a preset; write a report."""

from __future__ import annotations

import argparse
import shlex
import sys

from makevl.data.presets import PRESETS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="every baseline and ablation side by side, with plots")
    p.add_argument("--preset", choices=[n for n, preset in PRESETS.items() if preset.report_config],
                   help="data preset; its bundled config is the base config")
    p.add_argument("--refresh", metavar="DIR",
                   help="re-judge and re-render a finished report (no training)")
    p.add_argument("--out", help="output folder (default "
                   "reports/<preset>[-sparse-titles][-unseen-phrasing])")
    p.add_argument("--config", help="base run config, a file or a bundled name "
                   "(default: the preset's)")
    p.add_argument("--sparse-titles", action="store_true",
                   help="strip colour words from every title (train and test)")
    p.add_argument("--unseen-phrasing", action="store_true",
                   help="test queries use synonyms, word orders and typos training never saw")
    p.add_argument("--minutes-per-model", type=float, default=None,
                   help="training budget of each trained system")
    p.add_argument("--systems", type=lambda text: [s for s in text.split(",") if s],
                   default=None, metavar="A,B,...",
                   help="only these systems, comma-separated (default: every one, less an "
                        "ablation of something the config already leaves out)")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("overrides", nargs="*", help="section.key=value applied to every system")
    p.set_defaults(func=report_command)


def report_command(args: argparse.Namespace) -> int:
    from makevl.evaluation.report import refresh_report, run_report

    if args.refresh:
        figures = refresh_report(args.refresh)
        print(f"report re-rendered: {args.refresh}/report.md")
        _print_claims(figures)
        return 0
    if not args.preset:
        print("makevl report: --preset is required (or --refresh DIR)", file=sys.stderr)
        return 2
    overrides = list(args.overrides)
    suffix = ""
    if args.sparse_titles:
        overrides.append("data.sparse_titles=true")
        suffix = "-sparse-titles"
    if args.unseen_phrasing:
        overrides.append("data.unseen_phrasing=true")
        suffix += "-unseen-phrasing"
    out = args.out or f"reports/{args.preset}{suffix}"
    try:
        figures = run_report(
            args.preset,
            out,
            config=args.config,
            overrides=overrides,
            minutes_per_model=args.minutes_per_model,
            systems=args.systems,
            bootstrap=args.bootstrap,
            command="makevl " + shlex.join(sys.argv[1:]),
        )
    except ValueError as exc:  # a bad config, system name or catalog
        print(f"makevl report: {exc}", file=sys.stderr)
        return 2
    print(f"report written to {out}/report.md in {figures['seconds'] / 60:.1f} minutes")
    _print_claims(figures)
    return 0


def _print_claims(figures: dict) -> None:
    for claim in figures["claims"]:
        print(f"  {'holds' if claim['holds'] else 'DOES NOT HOLD'}: {claim['claim']}")
