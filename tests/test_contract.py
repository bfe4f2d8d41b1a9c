"""The contract is importable by a trainer or an external training loop without the server's
dependencies: no FastAPI, no uvicorn, no torch."""

from __future__ import annotations

import subprocess
import sys


def test_the_contract_imports_neither_fastapi_nor_torch() -> None:
    code = (
        "import sys\n"
        "import controller_service.contract.client, controller_service.contract.external\n"
        "import controller_service.contract.keys, controller_service.contract.schemas\n"
        "import controller_service.contract.store, controller_service.contract.limits\n"
        "heavy = [m for m in ('fastapi', 'starlette', 'uvicorn', 'torch') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_the_strategy_names_of_the_api_are_the_registry_s() -> None:
    from controller_service.contract.schemas import CreateRunRequest
    from controller_service.search.base import strategy_class
    from controller_service.search.options import STRATEGY_MODULES

    enum = CreateRunRequest.model_json_schema()["properties"]["strategy"]["enum"]
    assert enum == list(STRATEGY_MODULES)
    for name in enum:
        assert strategy_class(name).name == name
