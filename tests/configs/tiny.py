"""The tests' tiny experiment (tests/conftest.py::tiny_config) as a config file, for train.py subprocesses:

python train.py --config=tests/configs/tiny.py --config.workdir=RUN --config.data.path=STORE
"""

import importlib.util
from pathlib import Path


def get_config():
    path = Path(__file__).resolve().parents[1] / "conftest.py"
    spec = importlib.util.spec_from_file_location("cytoself_tests_conftest", path)
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    return conftest.tiny_config("runs/tiny", "data/tiny")
