from __future__ import annotations

import factory

from templates_app.models import HardwareProfile


class HardwareProfileFactory(factory.django.DjangoModelFactory[HardwareProfile]):
    class Meta:
        model = HardwareProfile

    name = factory.Sequence(lambda n: f"profile {n}")
    vcpus = 1
    memory_mib = 256
