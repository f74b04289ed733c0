"""Which output features a request names: outputs, base features, specs or "all"."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from robusta.errors import UnknownFeatureError
from robusta.plan.model import OutputFeature, Plan, SpecPlan, TileGroup
from robusta.spec.suggest import did_you_mean


@dataclass(frozen=True)
class GroupRequest:
    spec: SpecPlan
    group: TileGroup
    outputs: tuple[OutputFeature, ...]


def resolve_features(plan: Plan, names: Sequence[str] | None) -> list[GroupRequest]:
    """Output features for names of outputs, base features or specs (None or "all": all)."""
    wanted: dict[str, OutputFeature] = {}
    known: dict[str, list[OutputFeature]] = {}
    for spec in plan.specs:
        known.setdefault(spec.name, []).extend(spec.outputs)
        for feature in spec.features:
            known.setdefault(feature.name, []).extend(feature.outputs)
            for output in feature.outputs:
                known.setdefault(output.name, []).append(output)
    for name in names if names else ["all"]:
        if name == "all":
            chosen = [o for s in plan.specs for o in s.outputs]
        elif name in known:
            chosen = known[name]
        else:
            raise UnknownFeatureError(
                f'no feature, base feature or spec named "{name}"{did_you_mean(name, known)}; '
                "`robusta plan` lists them"
            )
        wanted.update((o.name, o) for o in chosen)
    requests = []
    for spec in plan.specs:
        for group in spec.groups:
            outputs = tuple(o for f in group.features for o in f.outputs if o.name in wanted)
            if outputs:
                requests.append(GroupRequest(spec, group, outputs))
    return requests


def choose_specs(plan: Plan, names: Sequence[str] | None) -> list[SpecPlan]:
    """The specs named (None or empty: every spec), in the order given."""
    if not names:
        return list(plan.specs)
    known = {s.name: s for s in plan.specs}
    for name in names:
        if name not in known:
            raise UnknownFeatureError(
                f'no spec named "{name}"{did_you_mean(name, known)}; specs: {", ".join(known)}'
            )
    return [known[n] for n in names]
