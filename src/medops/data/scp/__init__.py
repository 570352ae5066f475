"""The DICOM C-STORE receiver: durable storage, an index, and series handed to the ingester.

- :mod:`~medops.data.scp.store`: files written, fsynced and renamed under hashed names;
- :mod:`~medops.data.scp.series`: series complete after a quiet time, handed to the ingester;
- :mod:`~medops.data.scp.server`: the pynetdicom Storage SCP and its run loop.
"""

from medops.data.scp.series import IngestFn, SeriesTracker
from medops.data.scp.server import Receiver, ReceiverStats, serve_until_signalled
from medops.data.scp.store import InstanceKey, InstanceStore, uid_hash

__all__ = [
    "IngestFn",
    "InstanceKey",
    "InstanceStore",
    "Receiver",
    "ReceiverStats",
    "SeriesTracker",
    "serve_until_signalled",
    "uid_hash",
]
