"""Evaluation of ragdesk: suites, metrics (retrieval, ragas answer quality, refusals, latency, token cost),
stored runs, comparisons with gates, and HTML reports.

Importing this package is light; ragas and the model load only when a suite runs. The command line lives in
`evals.cli` (`ragdesk eval`).
"""

from ._harness import run_suite
from ._runs import RunStore
from ._suite import SuiteItem, load_suite

__all__ = ["RunStore", "SuiteItem", "load_suite", "run_suite"]
