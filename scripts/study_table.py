"""Markdown tables of a study's analysis.json (`rlscale analyze SWEEP_DIR`), for the results page.

    python scripts/study_table.py docs/results/study/ppo/analysis.json [--a2c docs/results/study/a2c/analysis.json] [--envs ENV_ID ...] [--by-env [--variant V]]

Per environment and target: S_min, E_min, B_crit with its 95% interval (or a lower bound when
B_crit lies beyond the largest batch swept), B_simple with its interval, their ratio, B_crit per
optimizer step, the batch sizes whose best lr sits at the edge of the grid, and the adaptive
runs' medians when there are any; then B_crit beside every noise-scale variant the trials
recorded (combined, Adam-preconditioned, policy and value apart), and the paper's claim over all
points, per variant. With --a2c, the
control's B_crit per iteration and per optimizer step beside PPO's, per (env, target). With
--envs, only those envs' rows, and the claim recomputed over them (`noise_scale_claim`). With
--by-env, only a line per env for one variant (--variant, default combined; the README's table),
then its claim.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _num(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    if 0 < abs(x) < 1e-6:  # a bootstrap fit whose S_min collapsed to 0
        return "~0"
    return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:.0f}"


def _ci(ci) -> str:
    return f"[{_num(ci[0])}, {_num(ci[1])}]" if ci else ""


def _value_ci(x, ci) -> str:
    return f"{_num(x)} {_ci(ci)}".rstrip()


def b_crit_cell(e: dict) -> str:
    if e["status"] == "b_crit_above_range":
        return f"> {_num(e['b_crit_lower_bound'])} (lower bound)"
    if e["status"] != "ok":
        return f"- ({e['status']})"
    if e.get("b_crit_ci_unbounded"):  # resamples beyond the batches swept: no upper bound
        return f"{_num(e['b_crit'])} [{_num(e['b_crit_ci'][0])}, unbounded]"
    return f"{_num(e['b_crit'])} {_ci(e['b_crit_ci'])}"


def unresolved(n_resolved: int, n_unresolved: int) -> str:
    """The trials whose B_simple was unresolved (left out of the mean, which is then a low estimate)."""
    return f", {n_unresolved} of {n_resolved + n_unresolved} trials unresolved" if n_unresolved else ""


def print_variants(a: dict) -> None:
    """B_crit beside every noise-scale variant's B_simple (when the trials recorded more than the
    combined one), then the claim per variant."""
    variants = [v for v in a.get("noise_scale_claim_by_variant") or {} if v != "combined"]
    if variants:
        print("\n| env | target | B_crit | " + " | ".join(f"B_simple {v} [95% CI] (ratio)" for v in ["combined", *variants]) + " |")
        print("| --- | --- | --- | " + " | ".join("---" for _ in ["combined", *variants]) + " |")
        for e in a["entries"]:
            cells = []
            for v in ["combined", *variants]:
                part = (e.get("b_simple_variants") or {}).get(v)
                ratio = ""
                if part and e["status"] == "ok" and part.get("ratio"):
                    ratio = f" ({_num(part['ratio'])})"
                elif part and part["b_simple"] and e["status"] == "b_crit_above_range":
                    ratio = f" (> {_num(e['b_crit_lower_bound'] / part['b_simple'])})"
                cells.append(f"{_value_ci(part['b_simple'], part.get('b_simple_ci'))}"
                             f"{unresolved(part.get('n_trials', 0), part.get('n_unresolved', 0))}{ratio}" if part else "-")
            print(f"| {e['env_id']} | {e['target']:g} | {b_crit_cell(e)} | " + " | ".join(cells) + " |")
    claims = a.get("noise_scale_claim_by_variant") or {"combined": a["noise_scale_claim"]}
    for v, c in claims.items():
        print(claim_line(c, "" if len(claims) == 1 else f", {v}"))


def print_pooled(a: dict) -> None:
    """B_simple pooled over seeds within each batch size (analysis._pooled_b_simple): per point and
    variant, each batch size's value, the slope of log B_simple on log B, and their mean beside
    B_crit; then the claim with it."""
    claims = a.get("noise_scale_claim_pooled_by_variant") or {}
    if not claims:
        return
    print("\n| env | target | variant | B_crit | B_simple by batch size (B: value) | slope on log B | mean [95% CI] (ratio) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for e in a["entries"]:
        for v in claims:
            p = ((e.get("b_simple_variants") or {}).get(v) or {}).get("pooled")
            if not p:
                continue
            by_b = ", ".join(f"{r['B']:g}: {_num(r['b_simple']) if r['b_simple'] is not None else 'unresolved'}" for r in p["by_batch"])
            ratio = f" ({_num(p['ratio'])})" if e["status"] == "ok" and p.get("ratio") else ""
            print(f"| {e['env_id']} | {e['target']:g} | {v} | {b_crit_cell(e)} | {by_b} | {_num(p.get('log_slope'))} "
                  f"| {_value_ci(p['b_simple'], p.get('b_simple_ci'))}{ratio} |")
    for v, c in claims.items():
        print(f"\nClaim (B_crit ~ B_simple pooled within batch sizes, {v}): {c['n_points']} points over {c['n_envs']} envs; "
              f"fraction within x{c['within_factor']:g}: {_num(c['fraction_within'])}; median ratio {_num(c.get('median_ratio'))}; "
              f"r2 of log B_crit on log B_simple {_num(c['r2_log'])} (slope {_num(c['slope_log'])}).")


def _range(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return _num(lo) if _num(lo) == _num(hi) else f"{_num(lo)}-{_num(hi)}"


def too_few(es: list[dict]) -> str:
    """How many of an env's targets too few of its finished batch sizes reached for a fit; '-'
    while none of its batch sizes has finished (every target is then 'too few' by default)."""
    if not any(e.get("batch_sizes_swept") for e in es):
        return "-"
    return f"{sum(e['status'] == 'too_few_batch_sizes' for e in es)} of {len(es)}"


def print_by_env(a: dict, variant: str) -> None:
    """One line per env for one noise-scale variant: its points with a fitted B_crit and that
    B_simple (`noise_scale_claim`'s), their B_crit, B_simple and ratio ranges, how many ratios lie
    within the claim's factor, how many B_crit intervals have no upper end, the lower bounds
    apart, and how many targets too few batch sizes reached for a fit. Then the claim over all
    of them."""
    from rlscale.analysis import claim_points, noise_scale_claim, variant_b_simple

    within = a["noise_scale_claim"]["within_factor"]
    print(f"| env | points | B_crit | B_simple ({variant}) | B_crit / B_simple | within x{within:g} | B_crit CI without upper end "
          "| B_crit lower bounds | targets reached at < 2 B |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for env in sorted({e["env_id"] for e in a["entries"]}):
        es = [e for e in a["entries"] if e["env_id"] == env]
        c = noise_scale_claim(es, within, variant)
        pts = claim_points(es, variant)
        cells = [_range([e["b_crit"] for e in pts]), _range([variant_b_simple(e, variant) for e in pts]),
                 _range([e["b_crit"] / variant_b_simple(e, variant) for e in pts])] if pts else ["-"] * 3
        n_in = round(c["fraction_within"] * c["n_points"]) if c["n_points"] else 0
        lower = ", ".join(f"> {_num(e['b_crit_lower_bound'])}" for e in es
                          if e["status"] == "b_crit_above_range" and variant_b_simple(e, variant)) or "-"
        print(f"| {env} | {c['n_points']} | {' | '.join(cells)} | {n_in} of {c['n_points']} "
              f"| {sum(bool(e.get('b_crit_ci_unbounded')) for e in pts)} of {c['n_points']} | {lower} "
              f"| {too_few(es)} |")
    print_pending(a)
    print(claim_line(noise_scale_claim(a["entries"], within, variant), f", {variant}"))


def print_pending(a: dict) -> None:
    """The batch sizes the analysis left out because their trials had not all finished
    (`pending_batch_sizes`), per env; nothing when there are none."""
    pending = a.get("pending_batch_sizes") or []
    for env in sorted({c["env_id"] for c in pending}):
        cells = [c for c in pending if c["env_id"] == env]
        sizes = ", ".join(f"{c['B']:g}" for c in cells)
        print(f"\n{env}: B = {sizes} left out, "
              f"{sum(c['n_pending'] for c in cells)} trials still pending.")


def claim_line(c: dict, name: str = "") -> str:
    """The claim (`noise_scale_claim`) in one line, after a blank one."""
    return (f"\nClaim (B_crit ~ B_simple{name}): {c['n_points']} points over {c['n_envs']} envs with a fitted B_crit; "
            f"fraction within x{c['within_factor']:g}: {_num(c['fraction_within'])}; median ratio {_num(c.get('median_ratio'))}; "
            f"r2 of log B_crit on log B_simple {_num(c['r2_log'])} (slope {_num(c['slope_log'])}); "
            f"{c['n_lower_bounds']} lower bounds.")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("analysis", type=Path)
    ap.add_argument("--a2c", type=Path, help="the A2C control's analysis.json")
    ap.add_argument("--envs", nargs="+", metavar="ENV_ID", help="only these envs (the claim is recomputed over them)")
    ap.add_argument("--by-env", action="store_true", help="only a line per env for one noise-scale variant, then its claim")
    ap.add_argument("--variant", default="combined", help="the noise-scale variant of --by-env (default combined)")
    args = ap.parse_args(argv)
    from rlscale.analysis import NOISE_VARIANTS

    if args.variant not in NOISE_VARIANTS:
        print(f"study_table: --variant {args.variant} is not a noise-scale variant; use one of {', '.join(NOISE_VARIANTS)}", file=sys.stderr)
        return 2
    if args.a2c and args.by_env:
        print("study_table: --by-env prints the PPO sweep's claim only; leave out --a2c", file=sys.stderr)
        return 2
    a = json.loads(args.analysis.read_text())
    if args.envs:
        from rlscale.analysis import claims_by_variant, noise_scale_claim

        unknown = sorted(set(args.envs) - {e["env_id"] for e in a["entries"]})
        if unknown:
            print(f"study_table: --envs names {', '.join(unknown)}, which {args.analysis} has no entry for", file=sys.stderr)
            return 2
        a["entries"] = [e for e in a["entries"] if e["env_id"] in args.envs]
        a["pending_batch_sizes"] = [c for c in a.get("pending_batch_sizes") or [] if c["env_id"] in args.envs]
        a["noise_scale_claim"] = noise_scale_claim(a["entries"], a["noise_scale_claim"]["within_factor"])
        a["noise_scale_claim_by_variant"] = claims_by_variant(a["entries"], a["noise_scale_claim"]["within_factor"])
        a["noise_scale_claim_pooled_by_variant"] = claims_by_variant(a["entries"], a["noise_scale_claim"]["within_factor"], "pooled")
    if args.by_env:
        print_by_env(a, args.variant)
        return 0
    print("| env | target | batch sizes reached | S_min | E_min | B_crit [95% CI] | B_simple [95% CI] | B_crit / B_simple "
          "| B_crit per optimizer step | best lr at grid edge (B) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    def per_step(e: dict) -> str:  # B_crit per optimizer step, or its lower bound
        if e["status"] == "b_crit_above_range" and e.get("optimizer_steps_per_iteration"):
            return f"> {_num(e['b_crit_lower_bound'] / e['optimizer_steps_per_iteration'])}"
        return _num(e.get("b_crit_per_optimizer_step")) if e["status"] == "ok" else "-"

    for e in a["entries"]:
        edges = ", ".join(f"{c['B']:g}" for c in e["best_configs"] if c.get("lr_at_grid_edge")) or "none"
        ratio = _num(e["ratio"]) if e["status"] == "ok" and e.get("ratio") else "-"
        fitted = e["status"] == "ok"  # S_min and E_min of a lower bound's fit mean nothing
        print(f"| {e['env_id']} | {e['target']:g} | {e['n_batch_sizes']} of {len(e['batch_sizes_swept'])} | {_num(e['s_min'] if fitted else None)} "
              f"| {_num(e['e_min'] if fitted else None)} | {b_crit_cell(e)} | {_value_ci(e['b_simple'], e.get('b_simple_ci'))}"
              f"{unresolved(e.get('n_b_simple_trials', 0), e.get('n_b_simple_unresolved', 0))} | {ratio} "
              f"| {per_step(e)} | {edges} |")
    print_pending(a)
    adaptive = [e for e in a["entries"] if e.get("adaptive")]
    if adaptive:
        print("\n| env | target | adaptive runs reached | S/S_min | E/E_min | (S/S_min-1)(E/E_min-1) | predicted gamma |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for e in adaptive:
            ad = e["adaptive"]
            # a median over fewer runs than reached (a run without a metrics table, or with no value) says over how many
            cell = lambda k, ad=ad: (f"{_num(ad[k]['median'])} {_ci(ad[k]['ci'])}"  # noqa: E731
                                     + (f" (n = {ad[k]['n']})" if ad[k]["n"] < ad["n_reached"] else ""))
            print(f"| {e['env_id']} | {e['target']:g} | {ad['n_reached']} of {ad['n_runs']} | {cell('s_over_s_min')} "
                  f"| {cell('e_over_e_min')} | {cell('measured_product')} | {cell('predicted_gamma')} |")
    print_variants(a)
    print_pooled(a)
    if args.a2c:
        b = {(e["env_id"], e["target"]): e for e in json.loads(args.a2c.read_text())["entries"]}
        print("\n| env | target | PPO B_crit | A2C B_crit | PPO B_crit per optimizer step | A2C B_crit per optimizer step | PPO B_simple | A2C B_simple |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for e in a["entries"]:
            f = b.get((e["env_id"], e["target"]))
            if f is not None:
                print(f"| {e['env_id']} | {e['target']:g} | {b_crit_cell(e)} | {b_crit_cell(f)} | {per_step(e)} "
                      f"| {per_step(f)} | {_num(e['b_simple'])} | {_num(f['b_simple'])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
