"""Units of the quantities in a sweep analysis, in one module that imports nothing of rlscale.

Both :mod:`rlscale.analysis` (which writes them into ``analysis.json``) and
:mod:`rlscale.report` (which prints them in ``report.html``) import :data:`UNITS` from here, so
the report does not depend on the analysis module.
"""

from __future__ import annotations

UNITS = {
    "B": "env steps per PPO iteration",
    "steps": "PPO iterations to reach the target (median over seeds, best lr config)",
    "s_min": "PPO iterations (infinite-batch limit)",
    "e_min": "env steps (small-batch limit)",
    "b_crit": "env steps per PPO iteration (E_min / S_min)",
    "b_simple_per_gradient": "examples (env steps) per gradient, i.e. per minibatch",
    "b_simple": "env steps per PPO iteration (b_simple_per_gradient * num_minibatches)",
    "ratio": "b_crit / b_simple (dimensionless)",
}
