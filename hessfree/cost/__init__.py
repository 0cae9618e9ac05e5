"""Cost model and simulated clusters: what-if analysis of data- and model-parallel SGD
and Hessian-free training, checked against the metered counts of real runs.

    from hessfree.cost import CostModel, paper_node, interconnect
    model = CostModel(layers=(360, 512, 512, 512, 1973), samples=709_765,
                      node=paper_node(), network=interconnect("omni-path"))
    for row in model.table(["bicgstab"], [4096], [1, 8, 32]):
        print(row.nodes, row.time_per_iteration_s, row.speedup)

See the README's sections "Cost model and simulated clusters" and "Model parallelism"
(``hessfree.cost.layouts``: data-, model- or 2-D splits of the nodes).
"""

from hessfree.cost.calibrate import Calibration, calibrate, default_path
from hessfree.cost.compute import EfficiencyCurve, NodeSpec, Work, flops_per_sample, gemm_flops, gemm_plan, n_params
from hessfree.cost.model import (
    Blocks,
    CostMethod,
    CostModel,
    Evaluation,
    Prediction,
    model_parallel_exact,
    model_parallel_paper,
)
from hessfree.cost.layouts import Layout, LayoutPrediction, layout_table, predict_layout
from hessfree.cost.network import Collective, Network
from hessfree.cost.presets import INTERCONNECTS, NETWORK_PRESETS, interconnect, network_preset, paper_node
from hessfree.cost.simulate import collective_cost, run_simulated, simulated_comm

__all__ = [
    "INTERCONNECTS",
    "Layout",
    "LayoutPrediction",
    "NETWORK_PRESETS",
    "Blocks",
    "Calibration",
    "Collective",
    "CostMethod",
    "CostModel",
    "Evaluation",
    "EfficiencyCurve",
    "Network",
    "NodeSpec",
    "Prediction",
    "Work",
    "calibrate",
    "collective_cost",
    "default_path",
    "flops_per_sample",
    "gemm_flops",
    "gemm_plan",
    "interconnect",
    "layout_table",
    "model_parallel_exact",
    "model_parallel_paper",
    "n_params",
    "network_preset",
    "paper_node",
    "predict_layout",
    "run_simulated",
    "simulated_comm",
]
