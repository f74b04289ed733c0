"""Which output features a request names: outputs, base features, specs or "all"."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from robusta.errors import UnknownFeatureError
from robusta.plan.model import OutputFeature, Plan, ServicePlan, SpecPlan, TileGroup
from robusta.plan.services import feature_index
from robusta.spec.suggest import did_you_mean


@dataclass(frozen=True)
class GroupRequest:
    spec: SpecPlan
    group: TileGroup
    outputs: tuple[OutputFeature, ...]


def resolve_features(plan: Plan, names: Sequence[str] | None) -> list[GroupRequest]:
    """Output features for names of outputs, base features, specs or services (None or
    "all": all); a service gives the features it names (its derived ones: ``services_in``)."""
    wanted: dict[str, OutputFeature] = {}
    known = feature_index(plan.specs)
    for service in plan.services:
        known.setdefault(service.name, []).extend(service.outputs)
    for name in names if names else ["all"]:
        if name == "all":
            chosen = [o for s in plan.specs for o in s.outputs]
        elif name in known:
            chosen = known[name]
        else:
            raise UnknownFeatureError(
                f'no feature, base feature, spec or service named "{name}"'
                f"{did_you_mean(name, known)}; `robusta plan` lists them"
            )
        wanted.update((o.name, o) for o in chosen)
    requests = []
    for spec in plan.specs:
        for group in spec.groups:
            outputs = tuple(o for f in group.features for o in f.outputs if o.name in wanted)
            if outputs:
                requests.append(GroupRequest(spec, group, outputs))
    return requests


def services_in(plan: Plan, names: Sequence[str] | None) -> list[ServicePlan]:
    """The services among ``names``, in the order given."""
    return [s for n in dict.fromkeys(names or ()) if (s := plan.service(n)) is not None]


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
