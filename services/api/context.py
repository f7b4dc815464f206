"""What every view is given, built once per app: the settings, the gRPC clients, the authorizer,
the mirror (pull-through for mirrored prefixes; off when none is configured), pull events (off
unless an endpoint wants them), the admission policies (none unless configured), the governance
rules (fetched from the metadata service), the web UI's catalog snapshot."""

from __future__ import annotations

import dataclasses

from services.api.access import Authorizer
from services.api.admission import Admission
from services.api.clients import Clients
from services.api.events import PullEvents
from services.api.mirroring import Mirror
from services.api.policy import PolicyCache
from services.api.settings import GatewaySettings
from services.ui.listing import Catalog


@dataclasses.dataclass(frozen=True)
class Context:
    settings: GatewaySettings
    clients: Clients
    authorizer: Authorizer
    mirror: Mirror
    pull_events: PullEvents
    admission: Admission
    policy: PolicyCache
    # The web UI's per-worker snapshot of the catalog (services/ui/listing.py).
    ui_catalog: Catalog = dataclasses.field(default_factory=Catalog)
