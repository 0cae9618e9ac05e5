"""Experiments that settle the paper's claims: declared as data, run through ``fit``,
resumable, reported as time to target on every axis (see ``spec``, ``runner``, ``report``)."""

from hessfree.experiments.replay import Cluster, replay
from hessfree.experiments.runner import Runner, RunEvent, RunSpec, read_run
from hessfree.experiments.spec import Experiment, Kind, MethodPlan, Quick

__all__ = ["Cluster", "Experiment", "Kind", "MethodPlan", "Quick", "RunEvent", "RunSpec", "Runner", "read_run", "replay"]
