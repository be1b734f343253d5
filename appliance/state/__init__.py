"""The state store: one SQLite database, one small class per table, one enum per state machine.

``StateStore`` opens and migrates the database; ``store.instances``,
``store.series``, ``store.studies``, ``store.jobs``, ``store.deliveries``,
``store.audit_log``, ``store.slots`` and ``store.clinical`` own the SQL of their
tables; :mod:`appliance.state.states` holds the states and their transitions.
"""

from appliance.state.schema import migration
from appliance.state.states import (
    DELIVERY_STATES,
    JOB_STATES,
    DeliveryState,
    JobState,
    SeriesState,
    StudyState,
)
from appliance.state.store import StateStore

__all__ = [
    "DELIVERY_STATES", "JOB_STATES", "DeliveryState", "JobState", "SeriesState", "StateStore", "StudyState",
    "migration",
]
