"""Coalition (Shapley) CAAP and patch interactions in ``vit-patching caap``: the options, their checks, the run and
the report sections they add.

``--coalitions N`` (an even N >= 4; 0 or absent: single-patch CAAP) runs
:func:`vit_patching.patching.caap_shapley.caap_shapley` with N antithetic permutations, ``--coalition-groups K``
K x K blocks of patches as players (K divides the patch grid) and ``--coalition-seed`` the permutations' seed.
``--interactions K`` (single image only) adds the pairwise interactions of the map's top K patches
(:func:`vit_patching.patching.caap_interactions.caap_interactions`; ``--interaction-kind shapley``: the Shapley
interaction index). The report then shows the Shapley map, its standard error per patch and the efficiency check
(the map sums to ``v(all) - v(empty)``).

Example:
    >>> from vit_patching.cli import main
    >>> main(["caap", "--sample", "0", "--coalitions", "4", "--coalition-groups", "2", "--out", "r.html"])  # doctest: +SKIP
    0
"""
from __future__ import annotations

import argparse
from typing import Any

from vit_patching.checks import check_block_size, check_coalition_settings

__all__ = ["add_coalition_arguments", "check_coalition_options", "coalition_label", "coalition_sections",
           "run_single", "single_settings"]

#: Values of ``--interaction-kind`` (``caap_interactions``'s ``kind``).
INTERACTION_KINDS = ("pairwise", "shapley")


def add_coalition_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``--coalitions``, ``--coalition-groups``, ``--coalition-seed``, ``--interactions`` and
    ``--interaction-kind`` to the ``caap`` parser."""
    p.add_argument("--coalitions", type=int, default=0, metavar="N",
                   help="coalition CAAP: each patch's Shapley value in the game of pinning sets of patches, from N "
                        "antithetic permutations (an even N >= 4; about N x players patched rows per image); 0 "
                        "(default): single-patch CAAP")
    p.add_argument("--coalition-groups", type=int, default=1, metavar="K",
                   help="with --coalitions: K x K blocks of patches as players (K divides the patch grid; default 1: "
                        "every patch); a block's value is shared equally by its patches")
    p.add_argument("--coalition-seed", type=int, default=0, help="with --coalitions: seed of the permutations (default 0)")
    p.add_argument("--interactions", type=int, default=0, metavar="K",
                   help="single image: also draw the interactions of the map's top K patches (K >= 2; K (K + 1) / 2 "
                        "patched rows for pairwise)")
    p.add_argument("--interaction-kind", choices=INTERACTION_KINDS, default="pairwise",
                   help="with --interactions: pairwise v(ij) - v(i) - v(j) + v(empty) (default) or the Shapley "
                        "interaction index (sampled with --coalitions permutations, default 8)")


def check_coalition_options(args: argparse.Namespace, dataset: bool) -> None:
    """Checks that need no model (a ValueError naming the option): the counts, the seed, options that need others.

    Example:
        >>> check_coalition_options(argparse.Namespace(coalitions=3, coalition_groups=1, coalition_seed=0,
        ...                         interactions=0, interaction_kind="pairwise"), dataset=False)
        Traceback (most recent call last):
        ...
        ValueError: --coalitions: expected 0 (single-patch CAAP) or an even number >= 4 of permutations (antithetic pairs; the standard error needs two pairs), got 3
    """
    check_coalition_settings(args.coalitions, args.coalition_groups, args.coalition_seed,
                             ("--coalitions", "--coalition-groups", "--coalition-seed"))
    if args.interactions:
        if dataset:
            raise ValueError(f"--interactions: single-image reports only (a dataset run stores maps), got {args.interactions}")
        if args.interactions < 2:
            raise ValueError(f"--interactions: expected a number of patches >= 2 (pairs), got {args.interactions}")


def coalition_label(n_permutations: int, groups: int) -> str:
    """What a coalition run computes, in the words of reports, ``settings.json`` and galleries.

    Example:
        >>> coalition_label(8, 2)
        'coalition CAAP (Shapley, 8 permutations, groups 2)'
    """
    return f"coalition CAAP (Shapley, {n_permutations} permutations, groups {groups})"


def run_single(args: argparse.Namespace, model: Any, image: Any, window: tuple[int, int], neutral: str,
               readout: str) -> tuple[Any, Any]:
    """(attribution, interactions or None) of one image as the options ask; errors name the library arguments."""
    import torch

    from vit_patching.patching.caap import caap
    from vit_patching.patching.caap_interactions import caap_interactions
    from vit_patching.patching.caap_shapley import DEFAULT_PERMUTATIONS, caap_shapley

    common = dict(neutral=neutral, site=args.site, readout=readout, include_prefix=args.include_prefix,
                  direction=args.direction, upsample=args.upsample, batch_size=args.batch_size)
    grid = model.grid_size_for(image)
    if args.coalitions:
        check_block_size(args.coalition_groups, grid, "--coalition-groups")
    if args.interactions > grid[0] * grid[1]:
        raise ValueError(f"--interactions: expected at most the {grid[0] * grid[1]} patches of the grid, "
                         f"got {args.interactions}")
    with torch.inference_mode():
        if args.coalitions:
            attr = caap_shapley(model, image, args.target, window, n_permutations=args.coalitions,
                                groups=args.coalition_groups, seed=args.coalition_seed, **common)
        else:
            attr = caap(model, image, args.target, window, **common)
        inter = None
        if args.interactions:
            inter = caap_interactions(model, image, attr, k=args.interactions, kind=args.interaction_kind,
                                      n_permutations=args.coalitions or DEFAULT_PERMUTATIONS, seed=args.coalition_seed,
                                      batch_size=args.batch_size)
    return attr, inter


def single_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The report's settings rows of the coalition options (empty for single-patch CAAP without interactions)."""
    out: dict[str, Any] = {}
    if args.coalitions:
        out.update({"method": coalition_label(args.coalitions, args.coalition_groups),
                    "coalition permutations": args.coalitions, "coalition groups": args.coalition_groups,
                    "coalition seed": args.coalition_seed})
    if args.interactions:
        out.update({"interactions": args.interactions, "interaction kind": args.interaction_kind})
    return out


def efficiency_line(attr: Any) -> str:
    """The efficiency check of a coalition result (image 0), in words."""
    total = float(attr.map[0].double().sum())
    v_all, v0 = float(attr.v_all[0]), float(attr.v_empty[0])
    return (f"Efficiency: the Shapley map sums to {total:.6g}; v(all) - v(empty) = {v_all:.6g} - {v0:.6g} = "
            f"{v_all - v0:.6g} (every permutation's contributions sum to it within {attr.efficiency_gap:.2g} in "
            f"float64; the float32 map within float32 rounding).")


def coalition_sections(attr: Any, inter: Any) -> list[Any]:
    """Report sections of a coalition result (standard-error map, efficiency table) and of interactions."""
    from vit_patching.patching.caap_shapley import ShapleyAttribution
    from vit_patching.plotting import SEQUENTIAL, ReportSection, patch_map

    sections = []
    if isinstance(attr, ShapleyAttribution):
        se = attr.standard_error[0]
        fig = patch_map(se, title=f"Standard error of each patch's Shapley value ({attr.n_permutations} permutations)",
                        value_label="standard error", zmid=float(se.max()) / 2, colorscale=SEQUENTIAL)
        sections.append(ReportSection.figure(
            "Standard error per patch", fig,
            caption="Spread of the antithetic pair means over the pairs, divided by the square root of their count; "
                    "a group's standard error is shared by its patches like its value."))
        total = float(attr.map[0].double().sum())
        rows = [
            {"quantity": "v(all): every player pinned", "value": float(attr.v_all[0])},
            {"quantity": "v(empty): no player pinned", "value": float(attr.v_empty[0])},
            {"quantity": "v(all) - v(empty)", "value": float(attr.v_all[0].double() - attr.v_empty[0].double())},
            {"quantity": "sum of the Shapley map", "value": total},
            {"quantity": "largest efficiency gap of a permutation (float64)", "value": attr.efficiency_gap},
            {"quantity": "mean standard error", "value": float(se.mean())},
            {"quantity": "players", "value": len(attr.players)},
            {"quantity": "distinct coalitions run", "value": attr.settings["n_coalitions"]},
        ]
        sections.append(ReportSection.table("Efficiency check", rows))
    if inter is not None:
        label = "Shapley interaction index" if inter.settings["kind"] == "shapley" else "pairwise interaction"
        k = inter.patches.shape[1]
        shown = min(10, k * (k - 1) // 2)
        sections.append(ReportSection.figure(
            f"Interactions of the top {k} patches", inter.plot(0, n_pairs=shown),
            caption=f"The {shown} strongest pairs by |{label}|: blue = synergy (more together than apart), red = "
                    f"redundancy; hover for values."))
        gw = inter.grid_size[1]
        names = [f"({p // gw}, {p % gw})" for p in inter.patches[0].tolist()]
        pairs = [{"patch i (row, col)": names[i], "patch j (row, col)": names[j], label: float(inter.matrix[0, i, j]),
                  "joint effect v(ij) - v(empty)": float(inter.joint[0, i, j])}
                 for i in range(k) for j in range(i + 1, k)]
        pairs.sort(key=lambda r: -abs(r[label]))
        sections.append(ReportSection.table(f"Pairs by |{label}|", pairs))
    return sections
