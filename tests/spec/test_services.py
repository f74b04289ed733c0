"""Feature service files: every mistake gets one located message; versions follow what a
service resolves to, not how it is written."""

from __future__ import annotations

import pytest

from robusta.workspace import load_workspace
from tests.conftest import SPEC, MakeProject
from tests.spec.test_validation import validate

SERVICE = """\
service: shop
features: [spend_1h, spend_7d]
request: {discount: double}
derived:
  net: spend_7d * (1 - request.discount)
  ratio: spend_1h / NULLIF(spend_7d, 0)
"""

# (case id, service text, expected "line:column" in shop.yaml, expected message fragment)
CASES = [
    (
        "unknown-feature",
        SERVICE.replace("[spend_1h, spend_7d]", "[spend_1h, spnd_7d]"),
        "2:22",
        'no feature, base feature or spec named "spnd_7d" (did you mean "spend_7d"?)',
    ),
    (
        "unknown-name-in-derived",
        SERVICE.replace("net: spend_7d *", "net: spend_7 *"),
        "5:8",
        'unknown feature "spend_7" (did you mean "spend_7d"?)',
    ),
    (
        "undeclared-request-input",
        SERVICE.replace("request.discount", "request.discnt"),
        "5:24",
        'request input "discnt" is not declared (did you mean "discount"?)',
    ),
    (
        "derived-syntax",
        SERVICE.replace("NULLIF(spend_7d, 0)", "NULLIF(spend_7d, 0"),
        "6:38",
        "Expecting )",
    ),
    (
        "derived-type",
        SERVICE.replace("(1 - request.discount)", "('a' - request.discount)"),
        "5:20",
        "'a' is STRING; this needs a number",
    ),
    (
        "unsupported-function",
        SERVICE.replace("NULLIF(spend_7d, 0)", "frobnicate(spend_7d)"),
        "6:21",
        "FROBNICATE is not supported in derived features",
    ),
    ("unknown-key", SERVICE.replace("request:", "requst:"), "3:1", 'did you mean "request"?'),
    (
        "request-type",
        SERVICE.replace("{discount: double}", "{discount: float}"),
        "3:21",
        'request input discount has type "float"',
    ),
    (
        "service-named-like-a-spec",
        SERVICE.replace("service: shop", "service: purchases"),
        "1:10",
        'service name "purchases" is already a spec',
    ),
    (
        "derived-named-like-a-feature",
        SERVICE.replace("  ratio:", "  spend_1h:"),
        "6:3",
        'derived feature "spend_1h" is already a feature of spec purchases',
    ),
    (
        "unknown-entity-mapping",
        SERVICE + "entities: {ITEM_ID: PRODUCT}\n",
        "7:12",
        'entity "ITEM_ID" keys none of the service\'s features',
    ),
    (
        "block-expression",
        SERVICE.replace(
            "  ratio: spend_1h / NULLIF(spend_7d, 0)\n", "  ratio: |\n    spend_1h /\n      nope\n"
        ),
        "8:7",
        'unknown feature "nope"',
    ),
]


@pytest.mark.parametrize(("case", "text", "where", "message"), CASES, ids=[c[0] for c in CASES])
def test_a_bad_service_gets_one_located_message(
    make_project: MakeProject, case: str, text: str, where: str, message: str
) -> None:
    code, output = validate(make_project(purchases=SPEC, shop=text))
    assert code == 1, output
    assert f"shop.yaml:{where}:" in output, output
    assert message in output, output
    assert "Traceback" not in output


def test_a_valid_service_is_compiled(make_project: MakeProject) -> None:
    code, output = validate(make_project(purchases=SPEC, shop=SERVICE))
    assert code == 0, output
    plan = load_workspace(make_project(purchases=SPEC, shop=SERVICE)).plan
    service = plan.service("shop")
    assert service is not None
    assert service.feature_names == ("spend_1h", "spend_7d", "net", "ratio")
    assert [str(d.type) for d in service.derived] == ["double", "double"]


def version_of(make_project: MakeProject, spec: str, service: str) -> str:
    plan = load_workspace(make_project(purchases=spec, shop=service)).require_valid().plan
    found = plan.service("shop")
    assert found is not None
    return found.version


def test_the_version_follows_what_the_service_resolves_to(make_project: MakeProject) -> None:
    base = version_of(make_project, SPEC, SERVICE)
    reformatted = SERVICE.replace(
        "spend_7d * (1 - request.discount)", "spend_7d*(1-request.discount)"
    )
    assert version_of(make_project, SPEC, reformatted) == base
    described = SERVICE + "description: for the model\n"
    assert version_of(make_project, SPEC, described) == base
    changed_window = SPEC.replace("windows: [1h, 7d]", "windows: [1h, 7d, 30d]")
    assert version_of(make_project, changed_window, SERVICE) == base  # not a feature it names
    changed_op = SPEC.replace("op: sum", "op: avg")
    assert version_of(make_project, changed_op, SERVICE) != base
    assert version_of(make_project, SPEC, SERVICE.replace("1 - ", "2 - ")) != base
