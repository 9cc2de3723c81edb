from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real sample data beside the checkout (see ../shared/data/README.md)."""
    if not (SHARED_DATA / "splits").is_dir():
        pytest.fail(f"real sample data not found at {SHARED_DATA}: the checkout must sit beside shared/")
    return SHARED_DATA
