"""mscpk: differentiable whole-body kinetics of therapeutic cells (MSCs first of all).

Units everywhere: time in hours (h), amounts in cells (or cell-equivalents of DNA and
label), volumes in mL, flows in mL/h, diameters in µm (see :mod:`mscpk.units`).

Quick start::

    import mscpk
    result = mscpk.simulate("mouse", "bm_msc", cells=2e6, t_end_h=96)
    result.summary()
    result.to_dataframe()

Everything a user needs is importable from here.
"""

import jax as _jax

# x64 everywhere: mass balance to 1e-9 and finite-difference gradient checks need it.
_jax.config.update("jax_enable_x64", True)

from .analysis.routes import compare_routes as compare_routes
from .api import SolveError as SolveError
from .api import build_model as build_model
from .api import default_times as default_times
from .api import simulate as simulate
from .dosing.regimen import Dose as Dose
from .dosing.regimen import DoseTable as DoseTable
from .dosing.regimen import Regimen as Regimen
from .host import Host as Host
from .mechanisms import Mechanisms as Mechanisms
from .model.layout import COMPARTMENTS as COMPARTMENTS
from .model.layout import ORGANS as ORGANS
from .model.model import Model as Model
from .model.parameters import KineticParameters as KineticParameters
from .observation.assays import OUTPUT_ORGANS as OUTPUT_ORGANS
from .observation.assays import QUANTITIES as QUANTITIES
from .physiology.species import SPECIES as SPECIES
from .physiology.species import Species as Species
from .physiology.species import species as species
from .product.cell_product import CellProduct as CellProduct
from .product.cell_product import cell_product as cell_product
from .product.cell_product import presets as presets
from .results import SimulationResult as SimulationResult
from .routes import ROUTES as ROUTES
from .solve.expm import solve_expm as solve_expm
from .solve.segments import Solution as Solution
from .solve.segments import SolverConfig as SolverConfig
from .solve.segments import solve as solve

__version__ = "0.1.0"

__all__ = [
    "COMPARTMENTS",
    "CellProduct",
    "Dose",
    "DoseTable",
    "Host",
    "KineticParameters",
    "Mechanisms",
    "Model",
    "ORGANS",
    "OUTPUT_ORGANS",
    "QUANTITIES",
    "ROUTES",
    "Regimen",
    "SPECIES",
    "SimulationResult",
    "Solution",
    "SolveError",
    "SolverConfig",
    "Species",
    "build_model",
    "cell_product",
    "compare_routes",
    "default_times",
    "presets",
    "simulate",
    "solve",
    "solve_expm",
    "species",
]
