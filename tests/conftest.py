import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/system/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.system)
