import ast
from pathlib import Path

import pytest

from makevl.config import ColumnMapping, DataConfig
from makevl.data.catalog import CatalogError
from makevl.data.fashion_mini import FASHION_MINI_COLUMNS
from makevl.data.presets import PRESETS, column_mapping, get_preset
from makevl.data.shop import load_shop


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="demo, fashion-mini, custom"):
        get_preset("fashoin-mini")


def test_each_preset_names_its_columns_category_and_config():
    assert get_preset("fashion-mini").columns == FASHION_MINI_COLUMNS
    assert get_preset("fashion-mini").category_attribute == "articleType"
    assert get_preset("demo").category_attribute == "category"
    assert get_preset("custom").category_attribute is None
    assert {p.report_config for p in PRESETS.values()} == {"demo-pretrained", "fashion-mini", None}


def test_shop_carries_the_presets_category_attribute(small_catalog: Path):
    shop = load_shop(DataConfig(preset="demo", catalog=str(small_catalog)))
    assert shop.category_attribute == "category" and len(shop.products) == 4


def test_a_missing_demo_catalog_is_an_error_not_a_new_shop(tmp_path: Path):
    typo = tmp_path / "my-shop" / "catalgo.csv"
    with pytest.raises(CatalogError, match="catalgo.csv"):
        load_shop(DataConfig(preset="demo", catalog=str(typo)))
    assert not (tmp_path / "my-shop").exists()  # nothing was written there


def test_column_pairs_go_on_top_of_a_base_mapping():
    columns = column_mapping(["title=name", "image="], FASHION_MINI_COLUMNS)
    assert columns.title == "name" and columns.image is None
    assert columns.attributes == FASHION_MINI_COLUMNS.attributes
    assert column_mapping([]) == ColumnMapping()
    with pytest.raises(ValueError, match="unknown field 'colour'"):
        column_mapping(["colour=x"])
    with pytest.raises(ValueError, match="FIELD=COLUMN"):
        column_mapping(["title"])


def _imports(module: str) -> set[str]:
    source = Path(__file__).parents[2] / "src" / "makevl" / "data" / f"{module}.py"
    names = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_fashion_mini_does_not_import_the_shop():
    assert "makevl.data.shop" not in _imports("fashion_mini")
    assert "makevl.data.shop" not in _imports("presets")
