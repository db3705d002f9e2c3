"""An offline Google Cloud for tests: a Compute Engine API whose VMs run as local processes, and GCS.

- ``cloud.py``: :class:`FakeGcp`, the project and its control layer (:class:`tests.fake_cloud.FakeCloud`).
- ``compute.py``: the Compute API's resources and methods (instances, disks, zone operations).
- ``server.py``: that API over HTTP, checked against the ``compute_v1`` protos; ``auth.py``: credentials.
- ``machines.py``: the instances' processes (the shared runner, tests/fake_vm.py); ``metadata.py``: their
  metadata servers.
- ``filters.py``: list filters; ``validation.py``: what the API refuses; ``errors.py``: its error responses.
- ``storage.py``: :class:`FakeGcs`, the gcp-storage-emulator.
"""

from .cloud import FakeGcp
from .compute import DATA_DEVICE
from .filters import FilterError, compile_filter
from .storage import GCSFS_PLAIN, FakeGcs

__all__ = ["DATA_DEVICE", "GCSFS_PLAIN", "FakeGcp", "FakeGcs", "FilterError", "compile_filter"]
