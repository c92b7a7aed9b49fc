from __future__ import annotations

import factory

from hypervisors.models import Hypervisor


class HypervisorFactory(factory.django.DjangoModelFactory[Hypervisor]):
    class Meta:
        model = Hypervisor

    name = factory.Sequence(lambda n: f"host{n}")
    uri = "test:///default"
