"""The ranking request's store keys, made for all items at once, against the one key text
of a lookup (``_key_text`` of the entity mapping), for every layout a ranking group can have."""

from __future__ import annotations

import pytest

from robusta.plan.model import KeyColumn, TileGroup, TileLayout
from robusta.serving.client import LookupRequestError, _item_key_texts, _key_text
from robusta.spec.datatypes import DataType
from robusta.spec.durations import Duration

USER = KeyColumn("user_id", "USER_ID", DataType.STRING)
USER_N = KeyColumn("user_n", "USER_N", DataType.BIGINT)
ITEM = KeyColumn("item_id", "ITEM_ID", DataType.STRING)
ITEM_N = KeyColumn("item_n", "ITEM_ID", DataType.BIGINT)
ITEMS: list[object] = ["i1", "", "a|b", "3:x|", 42, "é", "007"]


def group(*keys: KeyColumn) -> TileGroup:
    layout = TileLayout("t", keys, keys[0].column, (Duration(300_000_000),), 8)
    return TileGroup(layout, ())


@pytest.mark.parametrize(
    "keys",
    [(ITEM,), (USER, ITEM), (ITEM, USER), (USER_N, ITEM, USER), (ITEM_N,), (USER, ITEM_N)],
    ids=lambda keys: "+".join(k.column for k in keys),
)
def test_item_key_texts_are_the_lookup_key_texts(keys: tuple[KeyColumn, ...]) -> None:
    tiles = group(*keys)
    user = {"USER_ID": "u|7", "USER_N": "12"}
    items: list[object] = [42, "7", "-3", 0] if ITEM_N in keys else ITEMS
    want = [_key_text({**user, "ITEM_ID": i}, tiles) for i in items]
    assert _item_key_texts(user, items, "ITEM_ID", tiles) == want


def test_an_item_that_is_no_integer_says_so() -> None:
    with pytest.raises(LookupRequestError, match='"x" is not one'):
        _item_key_texts({}, ["1", "x"], "ITEM_ID", group(ITEM_N))
