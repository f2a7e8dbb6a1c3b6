"""Figures, a self-contained HTML report and W&B logging for an analysed sweep.

Reads what :func:`rlscale.analysis.analyze` wrote (``analysis.json`` and the CSV tables) plus
the trials' ``metrics.csv`` (or ``metrics.csv.gz``, ``rlscale.tracking.metrics_path``); writes ``figures/*.png`` and ``report.html`` into the sweep dir.
Matplotlib is used through the object API on an Agg canvas, so no display and no global
pyplot state are involved.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rlscale.tracking import metrics_path
from rlscale.units import UNITS
from rlscale.util import atomic_write_bytes, atomic_write_text

NOISE_COLUMN = "noise/b_simple_ema"

FIGURES = {
    "pareto": "pareto_steps_vs_env_steps.png",
    "noise": "b_simple_over_training.png",
    "bcrit": "b_crit_vs_b_simple.png",
    "bcrit_variants": "b_crit_vs_b_simple_by_variant.png",
    "scaling": "steps_vs_batch_size.png",
    "adaptive": "adaptive_batch_over_training.png",
}


def _new_figure(n_panels: int, panel_size=(5.0, 4.0)) -> tuple[Figure, list]:
    n_cols = min(n_panels, 3) or 1
    n_rows = max(1, -(-n_panels // n_cols))
    fig = Figure(figsize=(panel_size[0] * n_cols, panel_size[1] * n_rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[: max(n_panels, 1)]


def _save(fig: Figure, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _no_data(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _read_csv(path: Path) -> pd.DataFrame:
    """A CSV table, or an empty frame if the table has no columns (an empty sweep)."""
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def _colors(n: int) -> list:
    cmap = colormaps["viridis"]
    return [cmap(x) for x in np.linspace(0.0, 0.9, max(n, 1))]


# ----------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------


def plot_pareto(analysis: dict, path: Path) -> Path:
    """Per env: PPO iterations against env steps to each target, with the fitted hyperbola."""
    entries = analysis["entries"]
    envs = sorted({e["env_id"] for e in entries})
    fig, axes = _new_figure(len(envs))
    fig.suptitle("Steps vs examples to reach each target")
    if not envs:
        _no_data(axes[0], "no entries")
    for ax, env in zip(axes, envs):
        env_entries = [e for e in entries if e["env_id"] == env]
        for color, e in zip(_colors(len(env_entries)), env_entries):
            if not e["batch_sizes"]:
                continue
            b = np.asarray(e["batch_sizes"], dtype=float)
            s = np.asarray(e["steps"], dtype=float)
            label = f"target {e['target']:g}"
            if e["status"] == "ok":
                label += f" (B_crit={e['b_crit']:.3g})"
                # Trace the frontier by sweeping B well beyond the measured range.
                b_line = np.geomspace(b.min() / 8, b.max() * 8, 200)
                s_line = e["s_min"] + e["e_min"] / b_line
                ax.plot(b_line * s_line, s_line, color=color, lw=1.5)
                ax.plot([e["e_min"] * 2], [e["s_min"] * 2], marker="*", ms=12, color=color,
                        ls="none", markeredgecolor="k")
            elif e["status"] == "b_crit_above_range":
                label += f" (B_crit > {e['b_crit_lower_bound']:g})"
            else:
                label += f" ({e['status'].replace('_', ' ')})"
            ax.plot(b * s, s, "o", color=color, label=label)
            # adaptive-batch runs, one marker per seed, beside the fixed-B frontier (a run without
            # its metrics table has no env steps to place)
            runs = [p for p in (e.get("adaptive") or {}).get("runs", []) if p["reached"] and p.get("env_steps") is not None]
            if runs:
                ax.plot([p["env_steps"] for p in runs], [p["iterations"] for p in runs], "^", color=color,
                        markeredgecolor="k", label=f"target {e['target']:g}: adaptive B (per seed)")
        ax.set_xlabel("env steps to target, E")
        ax.set_ylabel("PPO iterations to target, S")
        ax.set_title(f"{env}\npoints: best lr per batch size; star: B = B_crit (2 S_min, 2 E_min)",
                     fontsize=9)
        if ax.lines:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.legend(fontsize=8)
        else:
            _no_data(ax, "no target reached")
    return _save(fig, path)


def plot_noise_over_training(sweep_dir: Path, table: pd.DataFrame, path: Path) -> Path:
    """Per env: the trainer's B_simple EMA over env steps, one colour per batch size."""
    trials = table.drop_duplicates("trial_id")
    trials = trials[(trials["status"] == "completed") & (trials["lr_rule"] != "adaptive")]  # B fixed per trial
    envs = sorted(trials["env_id"].dropna().unique())
    fig, axes = _new_figure(len(envs))
    fig.suptitle("Gradient noise scale B_simple over training")
    if not envs:
        _no_data(axes[0], "no completed trials")
    for ax, env in zip(axes, envs):
        env_trials = trials[trials["env_id"] == env]
        sizes = sorted(env_trials["B"].dropna().unique())
        plotted = False
        for color, b in zip(_colors(len(sizes)), sizes):
            label: str | None = f"B = {b:g} env steps/iter"
            for trial_id in env_trials.loc[env_trials["B"] == b, "trial_id"]:
                table_path = metrics_path(sweep_dir / "trials" / str(trial_id))
                if not table_path.exists():
                    continue
                metrics = _read_csv(table_path)
                if NOISE_COLUMN not in metrics or "env_steps" not in metrics:
                    continue
                m = metrics[["env_steps", NOISE_COLUMN]].apply(pd.to_numeric, errors="coerce")
                m = m[np.isfinite(m[NOISE_COLUMN]) & (m[NOISE_COLUMN] > 0)]
                if m.empty:
                    continue
                ax.plot(m["env_steps"], m[NOISE_COLUMN], color=color, alpha=0.7, lw=1, label=label)
                label = None  # one legend entry per batch size, not per seed
                plotted = True
        if plotted:
            ax.set_yscale("log")
            # Runs at different B cover very different env-step ranges; log x keeps the
            # small-batch runs visible.
            lo, hi = ax.dataLim.x0, ax.dataLim.x1
            if lo > 0 and hi / lo > 100:
                ax.set_xscale("log")
            ax.legend(fontsize=8)
        else:
            _no_data(ax, f"no {NOISE_COLUMN} data (or no metrics tables)")
        ax.set_xlabel("env steps")
        ax.set_ylabel("B_simple (examples per gradient)")
        ax.set_title(env)
    return _save(fig, path)


VARIANT_LABELS = {
    "combined": "combined (policy + value) gradient",
    "adam": "combined, Adam-preconditioned",
    "policy": "policy loss's gradient",
    "value": "value loss's gradient",
}


def _variant(e: dict, variant: str) -> tuple[float | None, list | None]:
    """An entry's B_simple of one noise-scale variant and its interval (analysis.json layout)."""
    if variant == "combined":
        return e.get("b_simple"), e.get("b_simple_ci")
    v = (e.get("b_simple_variants") or {}).get(variant) or {}
    return v.get("b_simple"), v.get("b_simple_ci")


MAX_AXIS_SPAN = 100.0  # B_crit vs B_simple axes reach at most this factor above the largest point


def _bcrit_panel(ax, analysis: dict, variant: str, colors: dict) -> None:
    """B_crit against one variant's B_simple (both env steps per iteration), log-log, with y = x,
    the x3 band, and lower bounds as upward arrows."""
    entries = analysis["entries"]
    points = [e for e in entries if e["status"] == "ok" and e["b_crit"] and _variant(e, variant)[0]]
    # B_crit beyond the largest batch swept: a lower bound, drawn as an upward arrow from it
    bounds = [e for e in entries if e["status"] == "b_crit_above_range" and _variant(e, variant)[0]]
    label = VARIANT_LABELS.get(variant, variant)
    if not points and not bounds:
        _no_data(ax, f"no fitted target with a B_simple ({label})")
        return
    markers = "osD^v<>ph"
    for i, env in enumerate(sorted(colors)):
        pts = [e for e in points if e["env_id"] == env]
        if not pts:
            continue
        x = np.array([_variant(e, variant)[0] for e in pts])
        y = np.array([e["b_crit"] for e in pts])
        xci = [_variant(e, variant)[1] for e in pts]
        # Bootstrap CIs as asymmetric error bars; a missing CI gets none.
        lo = np.array([e["b_crit"] - e["b_crit_ci"][0] if e["b_crit_ci"] else 0.0 for e in pts])
        # an interval without an upper end (b_crit_ci_unbounded) runs off the top of the axes (a
        # finite end far above them: matplotlib drops a whisker to inf)
        hi = np.array([(1e30 if e.get("b_crit_ci_unbounded") else e["b_crit_ci"][1] - e["b_crit"])
                       if e["b_crit_ci"] else 0.0 for e in pts])
        xlo = np.array([xi - c[0] if c else 0.0 for xi, c in zip(x, xci)])
        xhi = np.array([c[1] - xi if c else 0.0 for xi, c in zip(x, xci)])
        ax.errorbar(x, y, yerr=[np.clip(lo, 0, None), np.clip(hi, 0, None)],
                    xerr=[np.clip(xlo, 0, None), np.clip(xhi, 0, None)], fmt=markers[i % len(markers)],
                    color=colors[env], capsize=3, label=env)
        for e, xi, yi in zip(pts, x, y):
            ax.annotate(_target_label(analysis, e), (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7,
                        color=colors[env])
    # an env with lower bounds alone gets its own legend entry (points are drawn for envs in colors only)
    labelled = {e["env_id"] for e in points if e["env_id"] in colors}
    for e in bounds:
        env, xb, yb = e["env_id"], _variant(e, variant)[0], e["b_crit_lower_bound"]
        color = colors.get(env, "gray")
        ax.annotate("", xy=(xb, yb * 2.5), xytext=(xb, yb), arrowprops={"arrowstyle": "->", "color": color})
        ax.plot([xb], [yb], "_", color=color, ms=12, label=None if env in labelled else f"{env} (lower bounds only)")
        labelled.add(env)
        ax.annotate(_target_label(analysis, e), (xb, yb), textcoords="offset points", xytext=(4, -10), fontsize=7,
                    color=color)
    claim = (analysis.get("noise_scale_claim_by_variant") or {}).get(variant)
    if claim is None and variant == "combined":
        claim = analysis.get("noise_scale_claim")
    title = label
    if claim and claim.get("fraction_within") is not None:
        r2 = f", r2(log) {claim['r2_log']:.2f}" if claim.get("r2_log") is not None else ""
        title += (f"\n{claim['fraction_within']:.0%} of {claim['n_points']} points within x3{r2}"
                  f"; {len(bounds)} lower bounds (arrows)")
    ax.set_title(title, fontsize=9)
    values = [_variant(e, variant)[0] for e in points] + [e["b_crit"] for e in points]
    values += [v for e in bounds for v in (_variant(e, variant)[0], e["b_crit_lower_bound"] * 2.5)]
    values = [v for v in values if v and v > 0]
    # the axes span the points and the upper ends of their intervals; a lower end that
    # collapses towards 0 (a bootstrap fit with S_min ~ 0) runs off the bottom
    highs = [c[1] for e in points for c in (None if e.get("b_crit_ci_unbounded") else e.get("b_crit_ci"), _variant(e, variant)[1])
             if c and c[1]]
    # an upper end far above every point (a bootstrap fit with S_min ~ 0: no upper bound) runs
    # off the top rather than squeezing the points into a corner
    highs = [h for h in highs if h <= MAX_AXIS_SPAN * max(values)]
    lim = (min(values) / 10, max(values + highs) * 3)
    ax.plot(lim, lim, "k--", lw=1, label="B_crit = B_simple")
    for k in (3.0, 1 / 3):  # the band of the paper's claim
        ax.plot(lim, [v * k for v in lim], "k:", lw=0.8, label="x3 and x1/3" if k > 1 else None)
    ax.set_xlim(lim)
    ax.set_ylim(lim)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("B_simple (env steps per iteration; to the target, 95% CI over trials)")
    ax.set_ylabel("B_crit = E_min / S_min (env steps per iteration)")
    ax.legend(fontsize=8)


def _bcrit_colors(analysis: dict) -> dict:
    """One distinct hue per env (a qualitative palette: the envs have no order)."""
    envs = sorted({e["env_id"] for e in analysis["entries"] if e["status"] in ("ok", "b_crit_above_range")})
    tab10 = colormaps["tab10"]
    palette = [tab10(i) for i in range(len(envs))] if len(envs) <= 10 else _colors(len(envs))
    return dict(zip(envs, palette))


def _target_label(analysis: dict, e: dict) -> str:
    """A point's target as its fraction of the way from random to the reference score (how the
    study fixes targets), else the target itself."""
    ref = (analysis.get("references") or {}).get(e["env_id"])
    if ref and ref.get("reference_score") is not None and ref["reference_score"] != ref["random_score"]:
        return f"{100 * (e['target'] - ref['random_score']) / (ref['reference_score'] - ref['random_score']):.3g}%"
    return f"{e['target']:.3g}"


def plot_bcrit_vs_bsimple(analysis: dict, path: Path) -> Path:
    """B_crit against the primary (combined) B_simple, one colour per env and a point per target."""
    fig, (ax,) = _new_figure(1, panel_size=(7.0, 6.0))
    _bcrit_panel(ax, analysis, "combined", _bcrit_colors(analysis))
    fig.suptitle("Critical batch size vs noise scale (one point per env and target, labelled by the target's\n"
                 "fraction of the way from a random policy to the reference score where the sweep has one)", fontsize=10)
    return _save(fig, path)


def plot_bcrit_by_variant(analysis: dict, variants: list[str], path: Path) -> Path:
    """One panel per noise-scale variant: B_crit against that variant's B_simple (same envs, same
    colours)."""
    fig, axes = _new_figure(len(variants), panel_size=(5.5, 4.8))
    colors = _bcrit_colors(analysis)
    for ax, variant in zip(axes, variants):
        _bcrit_panel(ax, analysis, variant, colors)
    fig.suptitle("Critical batch size vs each noise-scale variant", fontsize=10)
    return _save(fig, path)


def plot_steps_vs_batch(dim: pd.DataFrame, path: Path) -> Path:
    """Per (env, target): median iterations to target against B, one line per lr rule."""
    panels = sorted({(e, t) for e, t in dim[["env_id", "target"]].itertuples(index=False)})
    fig, axes = _new_figure(len(panels))
    fig.suptitle("PPO iterations to target vs batch size per learning-rate rule")
    if not panels:
        _no_data(axes[0], "no completed trials")
    for ax, (env, target) in zip(axes, panels):
        rows = dim[(dim["env_id"] == env) & (dim["target"] == target)]
        rules = sorted(rows["lr_rule"].dropna().unique())
        anchor = None
        for color, rule in zip(_colors(len(rules)), rules):
            r = rows[(rows["lr_rule"] == rule) & np.isfinite(rows["median_iterations"])]
            if r.empty:
                continue
            label = rule
            if np.isfinite(r["b_diminishing"].iloc[0]):
                label += f" (diminishing from B={r['b_diminishing'].iloc[0]:g})"
            ax.plot(r["B"], r["median_iterations"], "o-", color=color, label=label)
            first = (r["B"].iloc[0], r["median_iterations"].iloc[0])
            if anchor is None or first[0] < anchor[0] or (first[0] == anchor[0] and first[1] < anchor[1]):
                anchor = first
        if anchor is None:
            _no_data(ax, "target not reached")
        else:
            b_line = np.geomspace(anchor[0], rows["B"].max(), 50)
            ax.plot(b_line, anchor[1] * anchor[0] / b_line, "k:", lw=1, label="perfect scaling (S ∝ 1/B)")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.legend(fontsize=8)
        ax.set_xlabel("batch size B (env steps per iteration)")
        ax.set_ylabel("median PPO iterations to target")
        ax.set_title(f"{env}, target {target:g}")
    return _save(fig, path)


def plot_batch_over_training(runs: list[Path], path: Path, title: str = "") -> Path:
    """Adaptive-batch runs: the batch B each iteration used (solid) beside the B_simple EMA
    that set it (dotted), both in env steps per iteration; one panel per environment, one
    colour per run within it."""
    by_env: dict[str, list[tuple[Path, dict]]] = {}
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        by_env.setdefault(str(summary.get("env_id", "?")), []).append((run, summary))
    fig, axes = _new_figure(len(by_env), panel_size=(5.0, 3.6))
    for ax, (env, env_runs) in zip(axes, sorted(by_env.items())):
        for k, (run, summary) in enumerate(env_runs):
            m = pd.read_csv(metrics_path(run))
            color = f"C{k % 10}"
            ax.plot(m["iteration"], m["env_steps_per_iteration"], "-", color=color, lw=1.2, label=f"seed {summary.get('seed', k)}")
            ax.plot(m["iteration"], m["noise/b_simple_ema"] * summary["num_minibatches"], ":", color=color, lw=1)
        ax.set_yscale("log")
        ax.legend(fontsize=7, title="B (solid), B_simple EMA (dotted)", title_fontsize=7)
        ax.set_xlabel("PPO iteration")
        ax.set_ylabel("env steps per iteration")
        ax.set_title(f"{title}{env}", fontsize=9)
    if not by_env:
        _no_data(axes[0], "no adaptive-batch run")
    return _save(fig, path)


def _adaptive_runs(sweep_dir: Path, table: pd.DataFrame) -> list[Path]:
    if table.empty or "lr_rule" not in table:
        return []
    ids = sorted(table.loc[(table["lr_rule"] == "adaptive") & (table["status"] == "completed"), "trial_id"].unique())
    # a run without its metrics table (records kept before tables were packed) has no curve to draw
    return [sweep_dir / "trials" / t for t in ids
            if (sweep_dir / "trials" / t / "summary.json").is_file() and metrics_path(sweep_dir / "trials" / t).is_file()]


def make_figures(sweep_dir: str | os.PathLike, analysis: dict | None = None) -> list[Path]:
    """Write all figures into ``sweep_dir/figures`` and return their paths. One of ours that this
    analysis does not make is removed, not left from an earlier analysis, except the adaptive
    runs' figure where the sweep has adaptive runs whose tables are gone (a clone of records
    kept before tables were packed): that figure cannot be drawn again, so it stays."""
    sweep_dir = Path(sweep_dir)
    analysis = analysis or _load_analysis(sweep_dir)
    fig_dir = sweep_dir / "figures"
    table = _read_csv(sweep_dir / "steps_to_target.csv")
    dim = _read_csv(sweep_dir / "diminishing_returns.csv")
    paths = [
        plot_pareto(analysis, fig_dir / FIGURES["pareto"]),
        plot_noise_over_training(sweep_dir, table, fig_dir / FIGURES["noise"]),
        plot_bcrit_vs_bsimple(analysis, fig_dir / FIGURES["bcrit"]),
        plot_steps_vs_batch(dim, fig_dir / FIGURES["scaling"]),
    ] + ([plot_batch_over_training(runs, fig_dir / FIGURES["adaptive"], "adaptive-batch runs: ")]
         if (runs := _adaptive_runs(sweep_dir, table)) else []) \
      + ([plot_bcrit_by_variant(analysis, variants, fig_dir / FIGURES["bcrit_variants"])]
         if len(variants := list(analysis.get("noise_scale_claim_by_variant") or {})) > 1 else [])
    adaptive_trials = not table.empty and "lr_rule" in table and bool((table["lr_rule"] == "adaptive").any())
    for name in set(FIGURES.values()) - {p.name for p in paths} - ({FIGURES["adaptive"]} if adaptive_trials else set()):
        (fig_dir / name).unlink(missing_ok=True)
    return paths


# ----------------------------------------------------------------------------------------
# HTML report
# ----------------------------------------------------------------------------------------

_EXPLANATION = """
<p>Each trial trains PPO at one batch size <b>B</b> (env steps per PPO iteration), learning-rate
config (rule, lr) and seed. For every target score, <b>S</b> is the number of PPO iterations to
reach it, taken as the median over seeds (a seed that never reached counts as infinite) for the
best learning-rate config at that batch size, and <b>E = B&middot;S</b> is the number of env
steps. Tuned runs lie on <code>(S/S_min - 1)(E/E_min - 1) = 1</code>, i.e.
<code>S = S_min + E_min/B</code>, fitted by least squares on log S. <b>B_crit = E_min/S_min</b>
(env steps per iteration): at B = B_crit a run takes 2&middot;S_min iterations and
2&middot;E_min env steps. Confidence intervals (2.5-97.5%) come from resampling seeds with
replacement and redoing the lr choice and fit.</p>
<p><b>B_simple</b> = tr(&Sigma;)/|G|&sup2; is measured by the trainer per gradient, i.e. in
examples per minibatch (<code>b_simple_per_gradient</code>), averaged over training up to the
target and over the best-config trials. <code>b_simple</code> multiplies it by the number of
minibatches per iteration to express it in env steps per iteration, the unit of B_crit;
<code>ratio = b_crit / b_simple</code> (McCandlish et al. 2018 find B_crit &asymp; B_simple
across tasks). That is the combined (policy + value) gradient's noise scale. The fits table
also sets B_crit beside its Adam-preconditioned form and, for trials run with
<code>noise.split_policy_value</code>, beside the policy and value losses' gradients apart
(<code>b_simple_&lt;variant&gt;</code>, <code>ratio_&lt;variant&gt;</code>), and the claim is
given per variant below it. A trial whose estimate up to the target is unresolved (its averaged
|G|&sup2; not positive: the noise swamps the mean gradient) shows as <code>inf</code> in the
steps-to-target table and stays out of the mean; <code>n_b_simple_unresolved</code> counts such
trials beside <code>n_b_simple_trials</code>, the resolved ones averaged, and an entry with some
has a low B_simple (a high ratio).</p>
<p><b>B_simple pooled within batch sizes</b> (<code>b_simple_pooled_&lt;variant&gt;</code>,
<code>ratio_pooled_&lt;variant&gt;</code>, and the claim's rows marked <i>pooled</i>): per batch
size, the best-config seeds' mean tr(&Sigma;) over their mean |G|&sup2; (each up to the target,
from the trials' metrics), then the mean over batch sizes. It keeps the seeds that are
unresolved alone; <code>analysis.json</code> holds each batch size's value and the slope of
log B_simple on log B, which shows how much the measured noise scale depends on the batch size
(and learning rate) of the run that measures it.</p>
<p><b>b_diminishing</b> (Golmant et al. 2018): for each lr rule, the smallest swept B such that
moving to the next larger swept B cuts the median iterations by less than 20% per doubling of B
(perfect scaling halves them); a larger B that stops reaching the target counts as no cut.</p>
"""


def _img_tag(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}" ' \
           f'style="max-width:100%"><figcaption>{html.escape(path.name)}</figcaption></figure>'


def _table_html(df: pd.DataFrame) -> str:
    if df.empty:
        return "<p><i>none</i></p>"
    return df.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}", border=0,
                      classes="table")


def _references(analysis: dict) -> pd.DataFrame:
    """The targets fixed in advance: per env, the reference and random scores and the source."""
    rows = [{"env_id": env, "targets": ", ".join(f"{t:g}" for t in
                                                 sorted({e["target"] for e in analysis["entries"] if e["env_id"] == env})),
             "fractions": ", ".join(f"{f:g}" for f in r["target_fractions"]), "reference_score": r["reference_score"],
             "random_score": r["random_score"], "source": r["source"]}
            for env, r in sorted((analysis.get("references") or {}).items())]
    return pd.DataFrame(rows, columns=["env_id", "targets", "fractions", "reference_score", "random_score", "source"])


def _claims(analysis: dict) -> pd.DataFrame:
    """One row per noise-scale variant and B_simple estimator: points, envs, share within x3, median ratio, r^2."""
    keys = ["n_points", "n_envs", "fraction_within", "median_ratio", "r2_log", "slope_log", "n_lower_bounds"]
    rows = [{"variant": VARIANT_LABELS.get(v, v), "estimator": estimator, **{k: c.get(k) for k in keys}}
            for estimator, name in (("mean", "noise_scale_claim_by_variant"), ("pooled", "noise_scale_claim_pooled_by_variant"))
            for v, c in (analysis.get(name) or {}).items()]
    return pd.DataFrame(rows, columns=["variant", "estimator", *keys])


def write_report_html(sweep_dir: str | os.PathLike, analysis: dict, figures: list[Path]) -> Path:
    """Self-contained ``report.html``: explanation, figures as data URIs, tables, failures."""
    sweep_dir = Path(sweep_dir)
    fits = _read_csv(sweep_dir / "pareto_fits.csv")
    dim = _read_csv(sweep_dir / "diminishing_returns.csv")
    table = _read_csv(sweep_dir / "steps_to_target.csv")
    failed = pd.DataFrame(analysis.get("failed_trials", []))
    pending = pd.DataFrame(analysis.get("pending_batch_sizes", []), columns=["env_id", "B", "n_pending"])
    without = pd.DataFrame(sorted((analysis.get("trials_without_metrics") or {}).items()), columns=["env_id", "completed trials"])
    units = pd.DataFrame(sorted(UNITS.items()), columns=["quantity", "unit / definition"])
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(analysis.get("trial_counts", {}).items()))
    name = html.escape(str(analysis.get("sweep_name", sweep_dir.name)))
    parts = [
        "<!DOCTYPE html>",
        f"<html><head><meta charset='utf-8'><title>rlscale report: {name}</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}"
        "table{border-collapse:collapse;font-size:12px}td,th{padding:2px 6px;border:1px solid #ccc}"
        "</style></head><body>",
        f"<h1>rlscale sweep report: {name}</h1>",
        f"<p>Trials by status: {html.escape(counts)}</p>",
        "<h2>Definitions and units</h2>", _EXPLANATION, _table_html(units),
        "<h2>Figures</h2>", *[_img_tag(p) for p in figures],
        "<h2>Targets and their references</h2>", _table_html(_references(analysis)),
        "<h2>Critical batch size per target</h2>", _table_html(fits),
        "<h2>The claim B_crit ~ B_simple per noise-scale variant</h2>", _table_html(_claims(analysis)),
        "<h2>Diminishing returns per learning-rate rule</h2>", _table_html(dim),
        f"<h2>Failed trials ({len(failed)})</h2>", _table_html(failed),
        f"<h2>Batch sizes left out of the fits while trials are pending ({len(pending)})</h2>", _table_html(pending),
        f"<h2>Completed trials without a metrics table ({int(without['completed trials'].sum())})</h2>",
        "<p>Their records give steps to targets and their own B_simple; the pooled B_simple (left out where any of "
        "a point's trials has no table), adaptive runs' E / E_min, product and predicted gamma, and the curves over "
        "training need the per-iteration table (metrics.csv or metrics.csv.gz).</p>", _table_html(without),
        "<h2>Steps to target, every trial</h2>", _table_html(table),
        "</body></html>",
    ]
    path = sweep_dir / "report.html"
    atomic_write_text(path, "\n".join(parts))
    return path


def make_report(sweep_dir: str | os.PathLike, analysis: dict | None = None) -> dict[str, Any]:
    """Figures plus ``report.html``; returns ``{"figures": [paths], "report": path}``."""
    analysis = analysis or _load_analysis(Path(sweep_dir))
    figures = make_figures(sweep_dir, analysis)
    return {"figures": figures, "report": write_report_html(sweep_dir, analysis, figures)}


def _load_analysis(sweep_dir: Path) -> dict:
    with open(sweep_dir / "analysis.json") as f:
        return json.load(f)


# ----------------------------------------------------------------------------------------
# Weights & Biases
# ----------------------------------------------------------------------------------------


def log_to_wandb(sweep_dir: str | os.PathLike, analysis: dict | None = None,
                 mode: str = "offline") -> str | None:
    """Log figures and tables as one W&B run (job_type "analysis", group = sweep name).

    The run directory lives inside the sweep dir. Credentials are whatever wandb already has
    (environment or netrc); nothing is written here. Returns the run's local directory, or
    None when ``mode == "disabled"``.
    """
    if mode == "disabled":
        return None
    import wandb  # lazy: importing wandb is slow and only needed here

    sweep_dir = Path(sweep_dir)
    analysis = analysis or _load_analysis(sweep_dir)
    name = str(analysis.get("sweep_name", sweep_dir.name))
    run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", "rlscale"),
        job_type="analysis",
        group=name,
        name=f"{name}-analysis",
        dir=str(sweep_dir),
        mode=cast(Literal["online", "offline", "disabled", "shared"], mode),  # wandb checks the value
        config={"sweep_name": name, "n_bootstrap": analysis.get("n_bootstrap")},
    )
    try:
        payload: dict[str, Any] = {}
        for rel in analysis.get("figures") or []:  # this analysis' figures, not whatever lies in figures/
            png = sweep_dir / rel
            if png.is_file():
                payload[f"figures/{png.stem}"] = wandb.Image(str(png))
        for csv in ["steps_to_target", "pareto_fits", "diminishing_returns"]:
            path = sweep_dir / f"{csv}.csv"
            if path.exists():
                df = _read_csv(path)
                # W&B tables want one type per column: text columns with gaps become "".
                text = df.select_dtypes(exclude="number").columns
                df[text] = df[text].fillna("").astype(str)
                df = df.replace([np.inf, -np.inf], np.nan)  # an unresolved B_simple: a gap, as JSON has no inf
                payload[f"tables/{csv}"] = wandb.Table(dataframe=df)
        run.log(payload)
        for e in analysis.get("entries", []):
            if e.get("status") == "ok":
                run.summary[f"b_crit/{e['env_id']}/{e['target']:g}"] = e["b_crit"]
        return str(run.dir)
    finally:
        run.finish()
