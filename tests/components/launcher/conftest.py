"""The fake API server fixture shared by the backend tests."""

import pytest

from tests.components.launcher.fake_apiserver import CONFIGMAPS, SERVICES, FakeApiServer


@pytest.fixture
def server():
    """A fake API server that accepts ConfigMaps and Services; tests add the routes they need."""
    with FakeApiServer() as fake:
        fake.routes[("POST", CONFIGMAPS)] = (201, {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "x"}})
        fake.routes[("POST", SERVICES)] = (201, {"kind": "Service", "apiVersion": "v1", "metadata": {"name": "x"}})
        yield fake
