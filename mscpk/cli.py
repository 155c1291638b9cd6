"""Command-line interface: ``mscpk simulate ...``.

Example::

    mscpk simulate --species mouse --route iv --cells 2e6 --hours 96 --out result.csv --plot result.png
"""

from __future__ import annotations

import argparse
import sys

from .model.layout import ORGANS
from .physiology.species import SPECIES
from .product.cell_product import presets
from .routes import ROUTES

SUMMARY_TIMES_H = (0.25, 1.0, 4.0, 24.0, 72.0)


def _number(name: str, *, allow_zero: bool):
    """argparse type: a finite number > 0 (or >= 0), with a message naming the option."""
    bound = ">= 0" if allow_zero else "> 0"

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: expected a number, got {text!r}") from None
        ok = value >= 0 if allow_zero else value > 0
        if not ok or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{name}: must be a finite number {bound}, got {text!r}")
        return value

    return parse


def _positive_float(name):
    return _number(name, allow_zero=False)


def _nonnegative_float(name):
    return _number(name, allow_zero=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mscpk",
        description="Whole-body kinetics of therapeutic cells (MSCs). Units: hours, cells, mL, µm.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser(
        "simulate",
        help="simulate one regimen and write a tidy CSV",
        description=(
            "Simulate a cell product given to a species. Prints viable cells as %% of the dose per organ "
            "at a few times and writes the tidy table (time_h, organ, quantity, value, unit) as CSV."
        ),
    )
    sim.add_argument("--species", default="mouse", choices=SPECIES, help="host species (default: mouse)")
    sim.add_argument(
        "--product", default="bm_msc", choices=presets(), help="cell-product preset (default: bm_msc)"
    )
    sim.add_argument("--route", default="iv", choices=ROUTES, help="route of administration (default: iv)")
    sim.add_argument(
        "--cells",
        type=_nonnegative_float("--cells"),
        required=True,
        help="number of cells per dose, e.g. 2e6",
    )
    sim.add_argument(
        "--hours",
        type=_positive_float("--hours"),
        default=72.0,
        help="simulated time span in hours (default: 72)",
    )
    sim.add_argument(
        "--infusion-min",
        type=_positive_float("--infusion-min"),
        default=None,
        help="give the dose as an infusion over this many minutes (default: bolus)",
    )
    sim.add_argument(
        "--repeat-every-h",
        type=_positive_float("--repeat-every-h"),
        default=None,
        help="repeat the dose every this many hours within --hours (default: one dose)",
    )
    sim.add_argument("--out", required=True, help="path of the tidy CSV to write")
    sim.add_argument("--plot", default=None, help="optional path of a PNG figure of viable cells per organ")
    sim.add_argument(
        "--organs",
        default="blood,lung,liver,spleen,bone_marrow,whole_body",
        help=f"comma-separated organs for the printed table (from blood, {', '.join(ORGANS)}, whole_body)",
    )
    return parser


def _regimen(args):
    from .dosing.regimen import Dose, Regimen

    infusion_h = None if args.infusion_min is None else args.infusion_min / 60.0
    starts = [0.0]
    if args.repeat_every_h is not None:
        t = args.repeat_every_h
        while t + (infusion_h or 0.0) <= args.hours:
            starts.append(t)
            t += args.repeat_every_h
    return Regimen([Dose(t, args.cells, args.route, infusion_h) for t in starts])


def cmd_simulate(args) -> int:
    from .api import simulate

    regimen = _regimen(args)
    organs = [o.strip() for o in args.organs.split(",") if o.strip()]
    result = simulate(args.species, args.product, regimen, t_end_h=args.hours)
    result.to_csv(args.out)
    table = result.summary(SUMMARY_TIMES_H, organs=organs)
    print(
        f"mscpk: {args.species}, {args.product}, {args.route}, {len(regimen)} dose(s) of {args.cells:g} cells"
        + (f" over {args.infusion_min:g} min" if args.infusion_min else " (bolus)")
    )
    print("viable cells, % of total dose:")
    print(table.to_string(float_format=lambda v: f"{v:9.3f}"))
    balance = result.mass_balance()
    print(f"mass balance (max relative error): {max(balance.values()):.1e}")
    print(f"wrote {args.out}")
    if args.plot:
        result.plot(args.plot)
        print(f"wrote {args.plot}")
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "simulate":
            return cmd_simulate(args)
    except (ValueError, TypeError) as err:
        print(f"mscpk: error: {err}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
